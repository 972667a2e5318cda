"""``GoldTrainer``: on-/off-policy cross-tokenizer distillation on top of ``transformers.Trainer``.

Per optimizer step the trainer fetches every gradient-accumulation slice first
(:meth:`GoldTrainer.get_batch_samples`), decides for each slice where its completions come from
(student rollout with probability ``lmbda``; else the teacher's samples when ``seq_kd``, else the
dataset), builds the aligned batches, and counts the groups of the whole global batch so the loss is
a mean over all of them however it is split across slices and processes. ``compute_loss`` then reads
as one line per stage: forwards → ``cross_tokenizer_loss`` → metrics.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from gold.collate import Collator
from gold.config import AlignmentConfig, LossConfig, RolloutConfig
from gold.data import (
    Example,
    Messages,
    TrainBatch,
    completion_text,
    examples_from_rows,
    logit_rows,
    prompt_ids,
)
from gold.losses import PairTables, cross_tokenizer_loss
from gold.rollout import Generator, HFGenerator
from gold.teacher import LocalTeacher, Teacher


def _examples(dataset: Any) -> list[Example]:
    rows = list(dataset)
    if rows and all(isinstance(row, Example) for row in rows):
        return rows
    return examples_from_rows(rows)


class GoldTrainer(Trainer):
    """Distils ``teacher`` into ``model`` (the student) across tokenizers.

    Args:
        model: the student causal LM.
        teacher: a :class:`gold.teacher.Teacher`, or a causal LM (wrapped in :class:`LocalTeacher`
            on the training device).
        args: ``transformers.TrainingArguments``.
        train_dataset: :class:`gold.data.Example` items, or rows with ``prompt``/``completion`` or
            ``messages`` (validated up front).
        student_tokenizer: the student's fast tokenizer (saved with checkpoints).
        teacher_tokenizer: the teacher's; needed when ``teacher`` is a bare model.
        loss: loss terms and weights. rollout: ``lmbda``, ``seq_kd``, sampling. alignment: tolerances.
        student_generator: replaces the HF ``generate`` sampler (e.g. a vLLM engine).
        **kwargs: passed to ``transformers.Trainer`` (callbacks, optimizers, ...).
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the global group count itself

    def __init__(
        self,
        model: Any,
        teacher: Teacher | Any,
        *,
        args: TrainingArguments,
        train_dataset: Sequence[Any],
        student_tokenizer: Any,
        teacher_tokenizer: Any | None = None,
        loss: LossConfig | None = None,
        rollout: RolloutConfig | None = None,
        alignment: AlignmentConfig | None = None,
        student_generator: Generator | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("eval_dataset") is not None:
            raise ValueError(
                "GoldTrainer does not run Trainer.evaluate on an eval_dataset; measure a student with "
                "gold.evaluate.distillation_gap (KL per byte to the teacher) instead"
            )
        self.loss_config = loss or LossConfig()
        self.rollout_config = rollout or RolloutConfig()
        alignment_config = alignment or AlignmentConfig()
        if not isinstance(teacher, LocalTeacher) and hasattr(teacher, "generate"):
            if teacher_tokenizer is None:
                raise ValueError("teacher is a model: pass teacher_tokenizer= (its fast tokenizer)")
            teacher = LocalTeacher(teacher, teacher_tokenizer, device=args.device)
        self.teacher: Teacher = teacher
        self.student_tokenizer = student_tokenizer
        tables = PairTables.build(student_tokenizer, teacher.tokenizer, teacher_rows=teacher.num_rows,
                                  student_rows=logit_rows(model))  # fmt: skip
        self.collator = Collator(student_tokenizer, teacher.tokenizer, tables,
                                 max_completion_length=self.rollout_config.max_completion_length,
                                 max_prompt_length=self.rollout_config.max_prompt_length,
                                 max_edit_fraction=alignment_config.max_edit_fraction)  # fmt: skip
        self._student_generator = student_generator
        self._prompt_cache: dict[tuple[str, str], list[int]] = {}
        self._metrics: dict[str, list[float]] = defaultdict(list)
        super().__init__(model=model, args=args, train_dataset=_examples(train_dataset),  # type: ignore[arg-type]
                         data_collator=list, processing_class=student_tokenizer, **kwargs)  # fmt: skip

    # ---- batches: sources, rollouts, alignment, global group count ----

    def slice_source(self, slice_index: int) -> str:
        """Where slice ``slice_index`` of this optimizer step takes its completions; the same on every
        process and after a resume (seeded by the seed, the step and the slice)."""
        draw = random.Random(f"{self.args.seed}/{self.state.global_step}/{slice_index}").random()
        if draw < self.rollout_config.lmbda:
            return "student"
        return "teacher" if self.rollout_config.seq_kd else "dataset"

    def _prompt(self, role: str, tokenizer: Any, prompt: str | Messages) -> list[int]:
        key = (role, prompt if isinstance(prompt, str) else repr(prompt))
        if key not in self._prompt_cache:
            self._prompt_cache[key] = prompt_ids(tokenizer, prompt)
        return self._prompt_cache[key]

    def student_generator(self) -> Generator:
        if self._student_generator is None:
            self._student_generator = HFGenerator(self.accelerator.unwrap_model(self.model), self.student_tokenizer,
                                                  self.rollout_config)  # fmt: skip
        return self._student_generator

    def build_batch(self, examples: Sequence[Example], source: str) -> TrainBatch:
        """Prompts on both sides, completions from ``source``, aligned into a :class:`TrainBatch`."""
        student_prompts = [self._prompt("student", self.student_tokenizer, e.prompt) for e in examples]
        teacher_prompts = [self._prompt("teacher", self.teacher.tokenizer, e.prompt) for e in examples]
        if source == "dataset":
            completions = self.collator.student_completion_ids([e.completion for e in examples])
            return self.collator(student_prompts, teacher_prompts, completions, source=source)
        copies = self.rollout_config.num_generations
        if source == "student":
            completions = self.student_generator().generate(student_prompts)
        else:
            sampled = self.teacher.generator(self.rollout_config).generate(teacher_prompts)
            texts = [completion_text(self.teacher.tokenizer, ids)[1] for ids in sampled]
            completions = self.collator.student_completion_ids(texts)
        student_prompts = [p for p in student_prompts for _ in range(copies)]
        teacher_prompts = [p for p in teacher_prompts for _ in range(copies)]
        return self.collator(student_prompts, teacher_prompts, completions, source=source)

    def _seeded_batch(self, examples: Sequence[Example], slice_index: int) -> TrainBatch:
        """:meth:`build_batch` with sampling seeded by (seed, step, slice, process): rollouts are
        reproducible and a resumed run samples what the uninterrupted one did (Trainer restores its
        RNG state only after fetching the first batches), while the global RNG is left untouched."""
        step_seed = hash((self.args.seed, self.state.global_step, slice_index, self.args.process_index)) % 2**63
        devices = [self.args.device] if self.args.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed)
            return self.build_batch(examples, self.slice_source(slice_index))

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[dict[str, TrainBatch]], torch.Tensor]:
        """All slices of one optimizer step, built, and the groups of the global batch."""
        raw = []
        for _ in range(num_batches):
            try:
                raw.append(next(epoch_iterator))
            except StopIteration:
                break
        start = time.perf_counter()
        batches = [self._seeded_batch(examples, i) for i, examples in enumerate(raw)]
        self._metrics["time/rollout_and_alignment_s"].append(time.perf_counter() - start)
        groups = torch.tensor(float(sum(b.aligned.num_groups for b in batches)), device=device)
        if self.accelerator.num_processes > 1:
            groups = self.accelerator.reduce(groups, reduction="sum")
        return [{"batch": b} for b in batches], groups.clamp(min=1.0)

    # ---- loss ----

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:  # fmt: skip
        batch: TrainBatch = inputs["batch"].to(self.args.device)
        student_logits = batch.student.logits(model)
        teacher_logits = self.teacher.logits(batch.teacher)
        loss, metrics = cross_tokenizer_loss(
            student_logits, teacher_logits, batch.aligned, self.loss_config,
            num_items_in_batch=num_items_in_batch, step=self.state.global_step,
        )  # fmt: skip
        self._record(metrics, batch, num_items_in_batch)
        # each process holds its share of the global mean; DDP averages gradients over processes
        loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._metrics["time/train_s"].append(time.perf_counter() - start)
        return loss

    # ---- metrics ----

    def _record(self, metrics: dict[str, float], batch: TrainBatch, num_items: Any) -> None:
        groups = max(batch.aligned.num_groups, 1)
        share = float(num_items) / groups if num_items is not None else 1.0
        for key, value in metrics.items():
            # loss terms arrive as this slice's share of the global mean: report the slice's own mean
            self._metrics[key].append(value * share if key.startswith("loss/") else value)
        self._metrics["rollout/on_policy_fraction"].append(float(batch.source == "student"))
        self._metrics["rollout/completion_tokens"].append(float((batch.aligned.student_groups >= 0).sum()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics:
            averaged = {key: sum(values) / len(values) for key, values in self._metrics.items() if values}
            seconds = sum(self._metrics["time/rollout_and_alignment_s"]) + sum(self._metrics["time/train_s"])
            if seconds > 0:
                averaged["throughput/completion_tokens_per_s"] = (
                    sum(self._metrics["rollout/completion_tokens"]) / seconds
                )
            logs = {**logs, **averaged}
            self._metrics.clear()
        super().log(logs, start_time)
