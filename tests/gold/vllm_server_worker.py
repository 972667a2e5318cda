"""Run by ``accelerate launch`` in test_vllm_server.py: two processes train against one vLLM server (the main
process sends every process's prompts and the weights); each rank saves what it sampled and its weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gold.config import RolloutConfig
from gold.models.zoo import load_tokenizer
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, training_args
from tests.gold.rollout.test_vllm import logged, vllm_model


class Recording(GoldTrainer):
    def step_rollouts(self, slices, sources):  # type: ignore[no-untyped-def]
        out = super().step_rollouts(slices, sources)
        self.sampled.extend(r.ids for rows in out.values() for r in rows)
        return out


def main(out: Path, url: str) -> None:
    student_tokenizer, teacher_tokenizer = load_tokenizer("smollm2"), load_tokenizer("mistral-v1")
    config = RolloutConfig(lmbda=1.0, temperature=1.0, max_completion_length=10, use_vllm=True, vllm_mode="server",
                           vllm_server_base_url=url, vllm_server_timeout=180)  # fmt: skip
    args = training_args(out, max_steps=2, per_device_train_batch_size=2, learning_rate=3e-2)
    trainer = Recording(vllm_model(student_tokenizer), vllm_model(teacher_tokenizer, seed=1), args=args,
                        train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                        rollout=config)  # fmt: skip
    trainer.sampled = []
    trainer.train()
    state = {k: v.detach().cpu() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    torch.save({"world": trainer.args.world_size, "sampled": trainer.sampled, "state": state,
                "gaps": logged(trainer, "rollout/engine_logprob_gap")},
               out / f"rank{trainer.args.process_index}.pt")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
