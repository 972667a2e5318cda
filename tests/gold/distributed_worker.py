"""Run by ``accelerate launch`` in test_distributed.py (also in one process by the tests themselves).

    python -m tests.gold.distributed_worker OUT MODE

``default``: a few GoldTrainer steps; each rank saves its student weights so the test can compare them.
``objectives``: one SGD step of SFT mixing (dataset slices) and one of OPD-RL with task rewards (rollouts from a
fixed generator), each over the same 4 rows; the weights must equal one process's over all 4 rows, which holds
only when every term is normalised by the global counts.
``reward_fails``: the reward function raises on rank 1 only; both processes must stop (no hang in a collective).
``sgd``: three SGD steps; launched plain (DDP) and with FSDP2, the gathered weights must agree.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from alignment import encode_continuation
from gold.config import LossConfig, RolloutConfig
from gold.rollout import Rollout
from gold.trainer import GoldTrainer
from gold.zoo import load_tokenizer
from tests.gold.conftest import ROWS, tiny

# prompts and completions of very different lengths: every split into two pairs has unequal counts per process
OBJECTIVE_ROWS = [
    {"prompt": "Hi?\n", "completion": "Yes."},
    {"prompt": "What is 2 plus 3?\n", "completion": "It is 5. Café ☕ 東京!"},
    {
        "prompt": "Name three animals that live on a farm, please, and what they say.\n",
        "completion": "A cow, a pig and a hen live on a farm; each has its own sound: moo, oink, cluck.",
    },
    {"prompt": "Count to twelve.\n", "completion": "1 2 3 4 5 6 7 8 9 10 11 12"},
]


class Recording(GoldTrainer):
    """Keeps the completions of every slice this rank trained on."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[no-untyped-def]
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.completions.extend(c for b in batches for c in b["batch"].completions)
        return batches, items


class FixedGenerator:
    """Two fixed completions per prompt, whatever the weights: rollouts that do not depend on the process."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def rollout(self, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int] | None = None) -> list[Rollout]:
        out = []
        for prompt in prompts:
            for text in (" ".join(["moo"] * (len(prompt) % 9 + 1)) + ".", "Moo"):
                out.append(Rollout([*encode_continuation(self.tokenizer, text), self.tokenizer.eos_token_id]))
        return out


def ends_with_a_full_stop(prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
    return [float(c.endswith(".")) for c in completions]


def fails_on_rank_one(prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
    from accelerate import PartialState

    if PartialState().process_index == 1:
        raise RuntimeError("this reward function fails on rank 1 only")
    return [1.0] * len(completions)


def tokenizers() -> tuple[Any, Any]:
    return load_tokenizer("smollm2"), load_tokenizer("mistral-v1")


def default_run(out: Path) -> dict[str, Any]:
    student_tokenizer, teacher_tokenizer = tokenizers()
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True, logging_steps=1)  # fmt: skip
    trainer = Recording(tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=args,
                        train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                        rollout=RolloutConfig(lmbda=0.5, max_completion_length=6, temperature=1.0))  # fmt: skip
    trainer.completions = []
    trainer.train()
    groups = [e.get("align/groups") for e in trainer.state.log_history]
    return {"state": _state(trainer), "groups": groups, "completions": trainer.completions}


def sgd_run(out: Path) -> dict[str, Any]:
    """Three SGD steps on dataset completions (no clipping: a wrong gradient shows in the weights), the student's
    whole weights gathered at the end (FSDP shards included); run under DDP and under FSDP for ``fsdp``."""
    student_tokenizer, teacher_tokenizer = tokenizers()
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=0.5, optim="sgd", max_grad_norm=0.0, report_to=[], save_strategy="no",
                             use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1)  # fmt: skip
    trainer = GoldTrainer(tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=args,
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          loss=LossConfig(uld_weight=0.5),
                          rollout=RolloutConfig(lmbda=0.0, max_completion_length=12))  # fmt: skip
    trainer.train()
    state = {k: v.detach().cpu().clone() for k, v in trainer.student_state_dict().items()}
    return {"state": state, "fsdp": trainer.is_fsdp_enabled, "losses": [e["loss"] for e in trainer.state.log_history
                                                                          if "loss" in e]}  # fmt: skip


def objective_run(out: Path, name: str, batch_size: int, reward: Any = ends_with_a_full_stop) -> GoldTrainer:
    """One SGD step (no clipping, so that a wrong scale shows) of SFT mixing (``sft``) or OPD-RL (``opd``)."""
    student_tokenizer, teacher_tokenizer = tokenizers()
    args = TrainingArguments(output_dir=str(out / name), max_steps=1, per_device_train_batch_size=batch_size,
                             learning_rate=0.5, optim="sgd", max_grad_norm=0.0, report_to=[], save_strategy="no",
                             use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1)  # fmt: skip
    if name == "sft":
        loss, rollout, extra = LossConfig(sft_weight=1.0), RolloutConfig(lmbda=0.0, max_completion_length=40), {}
    else:
        loss = LossConfig(hybrid_weight=0.5, opd_weight=1.0, opd_alpha=1.0)
        rollout = RolloutConfig(lmbda=1.0, num_generations=2, max_completion_length=40)
        extra = {"student_generator": FixedGenerator(student_tokenizer), "reward_funcs": [reward]}
    trainer = GoldTrainer(tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=args,
                          train_dataset=OBJECTIVE_ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer, loss=loss, rollout=rollout, **extra)  # fmt: skip
    trainer.train()
    return trainer


def _state(trainer: GoldTrainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def main(out: Path, mode: str) -> None:
    from accelerate import PartialState

    state = PartialState()
    if mode == "reward_fails":
        try:
            objective_run(out, "opd", batch_size=2, reward=fails_on_rank_one)
        except Exception as error:  # each rank says how it stopped, before the launcher ends the others
            (out / f"rank{state.process_index}.error").write_text(f"{type(error).__name__}: {error}", encoding="utf-8")
            raise
        return
    if mode == "default":
        result = default_run(out)
    elif mode == "sgd":
        result = sgd_run(out)
    else:
        result = {name: _state(objective_run(out, name, batch_size=2)) for name in ("sft", "opd")}
    torch.save({**result, "world": state.num_processes}, out / f"rank{state.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "default")
