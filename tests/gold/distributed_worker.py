"""Run by ``accelerate launch`` in test_distributed.py (also in one process by the tests themselves).

    python -m tests.gold.distributed_worker OUT MODE

``default``: a few GoldTrainer steps; each rank saves its student weights so the test can compare them.
``objectives``: one SGD step of SFT mixing (dataset slices) and one of OPD-RL with task rewards (rollouts from a
fixed generator), each over the same 4 rows; the weights must equal one process's over all 4 rows, which holds
only when every term is normalised by the global counts.
``reward_fails``: the reward function raises on rank 1 only; both processes must stop (no hang in a collective).
``sgd``: three SGD steps; launched plain (DDP) and with FSDP2, the gathered weights must agree.
``sgd_sharded_teacher``: the same steps with the teacher sharded over the processes (``LocalTeacher(shard=True)``).
``manual_ddp`` / ``manual_fsdp2``: GoldTrainer's batches and loss on a student wrapped by hand in DDP or FSDP2.
``teachers``: one SGD step with two teachers of different tokenizers, routed and mixed, over the same 4 rows; the
weights must equal one process's over all 4 rows (the step's denominator is the global weighted group count).
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
from gold.models.sharding import local_parameter_count
from gold.models.zoo import load_tokenizer
from gold.rollout import Rollout
from gold.teacher import LocalTeacher
from gold.training.trainer import GoldTrainer
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


def sgd_run(out: Path, shard_teacher: bool = False) -> dict[str, Any]:
    """Three SGD steps on dataset completions (no clipping: a wrong gradient shows in the weights), the student's
    whole weights gathered at the end (FSDP shards included); the teacher whole or sharded (``shard_teacher``)."""
    student_tokenizer, teacher_tokenizer = tokenizers()
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=0.5, optim="sgd", max_grad_norm=0.0, report_to=[], save_strategy="no",
                             lr_scheduler_type="constant", use_cpu=not torch.cuda.is_available(), seed=0,
                             disable_tqdm=True, logging_steps=1)  # fmt: skip
    teacher = LocalTeacher(tiny(teacher_tokenizer, seed=1), teacher_tokenizer, device=args.device,
                           shard=shard_teacher)  # fmt: skip
    trainer = GoldTrainer(tiny(student_tokenizer, seed=0), teacher, args=args,
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          loss=LossConfig(uld_weight=0.5),
                          rollout=RolloutConfig(lmbda=0.0, max_completion_length=12))  # fmt: skip
    trainer.train()
    state = {k: v.detach().cpu().clone() for k, v in trainer.student_state_dict().items()}
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {"state": state, "fsdp": trainer.is_fsdp_enabled, "losses": losses}
    if shard_teacher:
        result.update(_sharded_teacher_checks(teacher, teacher_tokenizer))
    return result


def manual_run(out: Path, wrap: str, hidden_states: str = "auto") -> dict[str, Any]:
    """Three SGD steps of GoldTrainer's own batches and loss (``get_batch_samples``, ``compute_loss``) on a student
    wrapped by hand: ``ddp`` (DistributedDataParallel) or ``fsdp2`` (``fully_shard`` per decoder layer and the root;
    accelerate enables FSDP only on GPUs, torch runs FSDP2 on gloo). Each process takes its own 2 rows per step;
    ``hidden_states``: ``loss.hidden_states`` ("always": the loss from hidden states through the DDP wrapper)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from gold.training.hidden_states import hidden_plan

    student_tokenizer, teacher_tokenizer = tokenizers()
    args = TrainingArguments(output_dir=str(out / "run"), max_steps=3, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)  # fmt: skip
    trainer = GoldTrainer(tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=args,
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          loss=LossConfig(uld_weight=0.5, hidden_states=hidden_states),  # type: ignore[arg-type]
                          rollout=RolloutConfig(lmbda=0.0, max_completion_length=12))  # fmt: skip
    student = trainer.model
    if wrap == "fsdp2":
        for layer in student.model.layers:
            fully_shard(layer)
        model = fully_shard(student)
    else:
        model = torch.nn.parallel.DistributedDataParallel(student)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    rank, losses = args.process_index, []
    for step in range(3):
        trainer.state.global_step = step
        data = trainer.train_dataset
        rows = [data[(4 * step + 2 * rank + i) % len(data)] for i in range(2)]
        batches, items = trainer.get_batch_samples(iter([rows]), 1, args.device)
        loss = trainer.compute_loss(model, batches[0], num_items_in_batch=items)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    plan = hidden_plan("always", student_model=student, teacher=trainer.teacher, device=args.device)
    return {"state": {k.removeprefix("module."): v.detach().cpu().clone() for k, v in state.items()},
            "losses": losses, "hidden_notes": plan.notes,
            "used_hidden": trainer.hidden_plan().student is not None}  # fmt: skip


def _sharded_teacher_checks(teacher: LocalTeacher, tokenizer: Any) -> dict[str, Any]:
    """What a sharded teacher holds here, its logits against the same teacher whole, and teacher samples drawn on
    every process from prompts of different lengths (a sharded ``generate`` must keep the processes in step)."""
    from accelerate import PartialState

    rank = PartialState().process_index
    whole = tiny(tokenizer, seed=1)
    ids = torch.tensor([encode_continuation(tokenizer, "Café ☕ 東京! It is 5.")])
    with torch.no_grad():
        sharded_logits = teacher.model(input_ids=ids).logits
        whole_logits = whole(input_ids=ids).logits
    config = RolloutConfig(max_completion_length=4 + 3 * rank, temperature=1.0)
    samples = teacher.generator(config).rollout([ids[0, : 3 + 2 * rank].tolist()])
    return {"teacher_local": local_parameter_count(teacher.model), "teacher_total": local_parameter_count(whole),
            "teacher_logits_gap": float((sharded_logits - whole_logits).abs().max()),
            "teacher_sample": samples[0].ids}  # fmt: skip


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
        rollout = RolloutConfig(lmbda=1.0, num_generations=2, max_completion_length=40, temperature=1.0)
        extra = {"student_generator": FixedGenerator(student_tokenizer), "reward_funcs": [reward]}
    trainer = GoldTrainer(tiny(student_tokenizer, seed=0), tiny(teacher_tokenizer, seed=1), args=args,
                          train_dataset=OBJECTIVE_ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer, loss=loss, rollout=rollout, **extra)  # fmt: skip
    trainer.train()
    return trainer


def teachers_run(out: Path, name: str, batch_size: int) -> GoldTrainer:
    """One SGD step (no clipping) with two teachers of different tokenizers (Mistral's SentencePiece, Qwen2.5's byte
    BPE): ``routing`` (each row's teacher_id) or ``mixing`` (both teachers on every row, weights 0.3 / 0.7)."""
    student_tokenizer, mistral = tokenizers()
    qwen = load_tokenizer("qwen2.5")
    args = TrainingArguments(output_dir=str(out / name), max_steps=1, per_device_train_batch_size=batch_size,
                             learning_rate=0.5, optim="sgd", max_grad_norm=0.0, report_to=[], save_strategy="no",
                             use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1)  # fmt: skip
    routes = ("mistral", "qwen", "qwen", "mistral")
    rows = [{**row, "teacher_id": teacher_id} for row, teacher_id in zip(OBJECTIVE_ROWS, routes, strict=True)]
    weights = {"mistral": 0.3, "qwen": 0.7} if name == "mixing" else None
    trainer = GoldTrainer(tiny(student_tokenizer, seed=0), teachers={"mistral": (tiny(mistral, seed=1), mistral),
                                                                     "qwen": (tiny(qwen, seed=2), qwen)},
                          teacher_weights=weights, args=args, train_dataset=rows, student_tokenizer=student_tokenizer,
                          rollout=RolloutConfig(lmbda=0.0, max_completion_length=40))  # fmt: skip
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
    elif mode in ("manual_ddp", "manual_fsdp2"):
        result = manual_run(out, mode.removeprefix("manual_"))
    elif mode == "manual_ddp_hidden":
        result = manual_run(out, "ddp", hidden_states="always")
    elif mode == "sgd_sharded_teacher":
        result = sgd_run(out, shard_teacher=True)
    elif mode == "teachers":
        result = {name: _state(teachers_run(out, name, batch_size=2)) for name in ("routing", "mixing")}
    else:
        result = {name: _state(objective_run(out, name, batch_size=2)) for name in ("sft", "opd")}
    torch.save({**result, "world": state.num_processes}, out / f"rank{state.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "default")
