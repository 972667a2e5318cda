"""Several teachers, several tokenizers, one student: :class:`gold.training.trainer.GoldTrainer`'s ``teachers=``.

Each (student, teacher) pair has its own :class:`TeacherPair`: its pair tables, collator and stop rules, built once
at construction and reused at every step. Two ways to use them:

* **routing** (``teacher_weights`` unset): each row's ``teacher_id`` names the one teacher that scores it;
* **mixing** (``teacher_weights={id: w}``): every row is scored by every teacher of weight ``w > 0``.

A slice's rows are split by teacher into :class:`TeacherPart` sub-batches, each built by its teacher's collator (a
``seq_kd`` slice samples each part from that part's teacher; a student rollout is aligned to each teacher that
scores its row). The step's loss is exact under gradient accumulation and DDP:

    loss = Σ_(row, teacher) w_(row, teacher) · Σ_groups ℓ  ÷  Σ_(global step) w_(row, teacher) · groups(row, teacher)

(:meth:`TeacherRouting.slice_items` gives the denominator's share of one slice). Routing is the one-hot case: the
sum over groups divided by the step's global group count, as with one teacher. ``teacher=`` is the one-teacher
form of the same machinery (its id is :data:`DEFAULT_TEACHER`, its slices keep ``{"batch": ...}`` inputs).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gold.config import AlignmentConfig, LossConfig, RolloutConfig, check_teacher_weights
from gold.data.collate import Collator
from gold.data.examples import DataError, Example, SideInputs, TrainBatch, logit_rows
from gold.losses import PairTables
from gold.models.stops import StopRule
from gold.teacher import LocalTeacher, Teacher
from gold.teacher.served import ServedTeacher

DEFAULT_TEACHER = "default"  # the id of ``teacher=``, the one-teacher form


class UnusedTeacherWarning(UserWarning):
    """A configured teacher that no training row routes to: it is loaded and never asked."""


@dataclass(frozen=True)
class TeacherPair:
    """One teacher and what aligns it with the student, built once.

    Attributes:
        teacher_id: the teacher's id (rows' ``teacher_id``, the logs' ``teacher/<id>/...``).
        teacher: its rows (local model, server or cache).
        collator: aligns completions between the student's and this teacher's tokenizer (its pair tables inside).
        role: the prompt cache's key for this teacher's prompts (``"teacher"`` for the one-teacher form).
    """

    teacher_id: str
    teacher: Teacher
    collator: Collator
    role: str


@dataclass(frozen=True)
class TeacherPart:
    """The rows of one slice that one teacher scores, as a batch built by that teacher's collator.

    Attributes:
        teacher_id: the teacher.
        weight: w of every row of the part (1 when routing).
        examples: the part's rows, in slice order.
        batch: their aligned batch (``num_generations`` rows per example for rollouts and teacher samples).
        advantages: GRPO advantages of an on-policy part with task rewards, else None.
    """

    teacher_id: str
    weight: float
    examples: tuple[Example, ...]
    batch: TrainBatch
    advantages: torch.Tensor | None = None


def teacher_models(teacher: Any, teachers: Mapping[str, Any] | None, *, teacher_tokenizer: Any,
                   device: torch.device) -> dict[str, Teacher]:  # fmt: skip
    """id → :class:`gold.teacher.Teacher`: ``teachers``' values (a Teacher, or a ``(causal_lm, tokenizer)`` tuple
    wrapped in :class:`LocalTeacher` on ``device``), or ``{DEFAULT_TEACHER: teacher}`` (a bare model wrapped with
    ``teacher_tokenizer``)."""
    if teachers is None:
        if not isinstance(teacher, LocalTeacher) and hasattr(teacher, "generate"):
            teacher = LocalTeacher(teacher, teacher_tokenizer, device=device)
        return {DEFAULT_TEACHER: teacher}
    if not isinstance(teachers, Mapping) or not teachers:
        raise ValueError(f"teachers= must be a non-empty mapping of ids to teachers, got {teachers!r:.80}")
    out: dict[str, Teacher] = {}
    for teacher_id, value in teachers.items():
        if not isinstance(teacher_id, str) or not teacher_id or "/" in teacher_id:
            raise ValueError(f"teachers=: the id {teacher_id!r} must be a non-empty string without '/'")
        if isinstance(value, tuple) and len(value) == 2:
            out[teacher_id] = LocalTeacher(value[0], value[1], device=device)
        elif hasattr(value, "logits") and hasattr(value, "tokenizer"):
            out[teacher_id] = value
        else:
            raise ValueError(f"teachers[{teacher_id!r}] must be a gold Teacher (LocalTeacher, ServedTeacher, a "
                             f"cache) or a (causal_lm, tokenizer) tuple, got {type(value).__name__}")  # fmt: skip
    return out


def build_pair(teacher_id: str, teacher: Teacher, *, student_model: Any, student_tokenizer: Any,
               student_stop: StopRule, loss: LossConfig, rollout: RolloutConfig, alignment: AlignmentConfig,
               role: str) -> TeacherPair:  # fmt: skip
    """The pair tables and collator of the student with ``teacher`` (a served teacher's ``seq_kd`` sampler is
    refused now, not at the first off-policy step)."""
    if rollout.seq_kd and rollout.lmbda < 1 and isinstance(teacher, ServedTeacher):
        teacher.generator(rollout)
    tables = PairTables.build(student_tokenizer, teacher.tokenizer, teacher_rows=teacher.num_rows,
                              student_rows=logit_rows(student_model), student_stop=student_stop,
                              teacher_stop=teacher.stop, vocab_match=loss.vocab_match,
                              teacher_tail=getattr(teacher, "tail_column", None))  # fmt: skip
    collator = Collator(student_tokenizer, teacher.tokenizer, tables,
                        max_completion_length=rollout.max_completion_length,
                        max_prompt_length=rollout.max_prompt_length, max_edit_fraction=alignment.max_edit_fraction,
                        end_group=alignment.end_group, student_stop=student_stop,
                        teacher_stop=teacher.stop)  # fmt: skip
    return TeacherPair(teacher_id, teacher, collator, role)


def shared_logits(previous: tuple[SideInputs, torch.Tensor] | None, inputs: SideInputs) -> torch.Tensor | None:
    """The student logits of ``previous`` (the slice's last part: its student inputs and logits) when ``inputs`` are
    the same rows, else None. Mixing hands every teacher the same completions; a row cut at a group boundary of one
    teacher's alignment can differ for another, so the inputs are compared, not assumed."""
    if previous is None:
        return None
    seen, logits = previous
    same = seen.prompt_width == inputs.prompt_width and all(
        a.shape == b.shape and torch.equal(a, b)
        for a, b in ((seen.input_ids, inputs.input_ids), (seen.attention_mask, inputs.attention_mask),
                     (seen.position_ids, inputs.position_ids)))  # fmt: skip
    return logits if same else None


@dataclass(frozen=True)
class Routing:
    """Which teachers score which rows: ``weights`` None routes each row to its ``teacher_id`` (``several``: rows
    must name one; else every row goes to the only teacher), a mapping mixes every teacher of weight > 0."""

    teacher_ids: tuple[str, ...]
    weights: Mapping[str, float] | None = None
    several: bool = False

    def __post_init__(self) -> None:
        if self.weights is not None:
            if not self.several:
                raise ValueError("teacher_weights mixes several teachers: pass them as teachers={id: teacher}")
            check_teacher_weights(dict(self.weights), list(self.teacher_ids))

    def routes(self, example: Example, index: int) -> tuple[tuple[str, float], ...]:
        """``(teacher_id, weight)`` of each teacher that scores ``example`` (row ``index``, named in errors)."""
        if self.weights is not None:
            return tuple((t, float(self.weights[t])) for t in self.teacher_ids if self.weights.get(t, 0) > 0)
        if not self.several:
            return ((self.teacher_ids[0], 1.0),)
        if example.teacher_id not in self.teacher_ids:
            where = f"row {index}" + (f" ({example.label})" if example.label else "")
            got = "names no teacher" if example.teacher_id is None else f"names teacher {example.teacher_id!r}"
            raise DataError(f"{where} {got}; each row's teacher_id (data.teacher_field) must be one of "
                            f"{', '.join(map(repr, self.teacher_ids))} (or give teacher_weights to mix every "
                            "teacher on every row)")  # fmt: skip
        return ((example.teacher_id, 1.0),)

    def split(self, examples: Sequence[Example]) -> list[tuple[str, float, list[int]]]:
        """``(teacher_id, weight, row indices)`` per teacher that scores any of ``examples``, in teacher order."""
        rows: dict[str, list[int]] = {}
        weights: dict[str, float] = {}
        for index, example in enumerate(examples):
            for teacher_id, weight in self.routes(example, index):
                rows.setdefault(teacher_id, []).append(index)
                weights[teacher_id] = weight
        return [(t, weights[t], rows[t]) for t in self.teacher_ids if t in rows]

    def check_rows(self, examples: Sequence[Example]) -> None:
        """Every row routes somewhere (else :class:`DataError` naming it); a teacher no row routes to is named in
        an :class:`UnusedTeacherWarning`."""
        used = {teacher_id for index, e in enumerate(examples) for teacher_id, _ in self.routes(e, index)}
        unused = [t for t in self.teacher_ids if t not in used]
        if unused and examples:
            warnings.warn(f"teacher {', '.join(map(repr, unused))} scores no row: no training row's teacher_id names "
                          "it (and no teacher_weights mixes it in); it is never asked", UnusedTeacherWarning,
                          stacklevel=3)  # fmt: skip


class TeacherRouting:
    """The trainer mixin: per-teacher sub-batches of a slice, their share of the step's denominator, and the
    per-teacher logs. Needs the trainer's ``pairs``, ``routing``, ``rollout_config``, ``build_batch``,
    ``count_items``, ``_sums`` and ``_metrics``."""

    pairs: dict[str, TeacherPair]
    routing: Routing
    rollout_config: Any
    _sums: Any
    _metrics: Any

    def build_parts(self, examples: Sequence[Example], source: str, rollouts: Sequence[Any] | None,
                    ) -> list[TeacherPart]:  # fmt: skip
        """One slice split by teacher, each part built by its teacher's collator (``rollouts``: the slice's student
        samples, ``num_generations`` per row in row order, handed to every part that holds the row)."""
        copies = self.rollout_config.num_generations
        parts = []
        for teacher_id, weight, rows in self.routing.split(examples):
            chosen = [examples[r] for r in rows]
            own = None if rollouts is None else [x for r in rows for x in rollouts[r * copies : (r + 1) * copies]]
            batch = self.build_batch(chosen, source, own, teacher_id=teacher_id)  # type: ignore[attr-defined]
            parts.append(TeacherPart(teacher_id, weight, tuple(chosen), batch))
        return parts

    def slice_parts(self, inputs: Mapping[str, Any]) -> list[TeacherPart]:
        """A slice's parts; a one-teacher slice (``{"batch": ...}``) is one part of weight 1."""
        if "parts" in inputs:
            return list(inputs["parts"])
        return [TeacherPart(self.routing.teacher_ids[0], 1.0, (), inputs["batch"], inputs.get("advantages"))]

    def slice_items(self, inputs: Mapping[str, Any]) -> float:
        """The slice's share of the step's denominator: Σ over parts of weight × scored groups."""
        return sum(part.weight * self.count_items(part.batch) for part in self.slice_parts(inputs))  # type: ignore[attr-defined]

    def teacher_of(self, example: Example) -> Teacher:
        """The first teacher that scores ``example``."""
        return self.pairs[self.routing.routes(example, 0)[0][0]].teacher

    def _record_part(self, part: TeacherPart, batch: TrainBatch, metrics: Mapping[str, float], num_items: Any) -> None:
        """Keeps one part's per-teacher sums (several teachers only): its loss terms as sums over its groups, its
        groups (weighted and not), rows and stops."""
        if not self.routing.several:
            return
        key, items = f"per_teacher/{part.teacher_id}", float(self.count_items(batch))  # type: ignore[attr-defined]
        for name, value in metrics.items():
            if name.startswith("loss/") and name != "loss/sft":
                self._sums[f"{key}/{name}"] += value * (float(num_items) if num_items is not None else items)
        self._sums[f"{key}/groups"] += items
        self._sums[f"{key}/weighted_groups"] += part.weight * items
        self._sums[f"{key}/rows"] += float(len(batch.completions))
        self._sums[f"{key}/completions"] += batch.counts["completions"]
        self._sums[f"{key}/ended"] += batch.counts["completions/ended"]
        if "hybrid/teacher_matched_mass" in metrics:
            self._metrics[f"teacher/{part.teacher_id}/matched_mass"].append(metrics["hybrid/teacher_matched_mass"])

    def _logged_sums(self) -> dict[str, float]:
        out: dict[str, float] = super()._logged_sums()  # type: ignore[misc]
        sums, ids = self._sums, self.routing.teacher_ids
        weighted = sum(sums.get(f"per_teacher/{t}/weighted_groups", 0.0) for t in ids)
        if not self.routing.several or not weighted:  # one teacher, or nothing recorded per teacher (SFT baseline)
            return out
        rows = sum(sums.get(f"per_teacher/{t}/rows", 0.0) for t in ids)
        for teacher_id in ids:
            key = f"per_teacher/{teacher_id}"
            out[f"teacher/{teacher_id}/group_fraction"] = sums.get(f"{key}/weighted_groups", 0.0) / weighted
            out[f"teacher/{teacher_id}/row_fraction"] = sums.get(f"{key}/rows", 0.0) / max(rows, 1.0)
            if sums.get(f"{key}/completions"):
                out[f"teacher/{teacher_id}/stop_rate"] = sums[f"{key}/ended"] / sums[f"{key}/completions"]
            for name in [k for k in sums if k.startswith(f"{key}/loss/")]:
                term = name.removeprefix(f"{key}/loss/")
                out[f"loss/{teacher_id}/{term}"] = sums[name] / max(sums[f"{key}/groups"], 1.0)
        return out
