"""Run by ``accelerate launch`` in test_distributed.py: a few GoldTrainer steps, then each rank saves
its student weights so the test can compare them."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

from gold.config import RolloutConfig
from gold.trainer import GoldTrainer
from gold.zoo import load_tokenizer
from tests.gold.conftest import ROWS, tiny


class Recording(GoldTrainer):
    """Keeps the completions of every slice this rank trained on."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[no-untyped-def]
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.completions.extend(c for b in batches for c in b["batch"].completions)
        return batches, items


def main(out: Path) -> None:
    student_tokenizer, teacher_tokenizer = load_tokenizer("smollm2"), load_tokenizer("mistral-v1")
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True, logging_steps=1)  # fmt: skip
    trainer = Recording(tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=args,
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          rollout=RolloutConfig(lmbda=0.5, max_completion_length=6, temperature=1.0))  # fmt: skip
    trainer.completions = []
    trainer.train()
    rank = trainer.args.process_index
    state = {k: v.detach().cpu() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    groups = [e.get("align/groups") for e in trainer.state.log_history]
    torch.save(
        {"world": trainer.args.world_size, "state": state, "groups": groups, "completions": trainer.completions},
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
