"""Build a :class:`gold.data.TrainBatch` from prompts and student completion ids.

One path for every source of completions (dataset, student rollout, teacher rollout): the student's
ids are cut to whole characters and decoded once, the teacher tokenizes that text, the two
tokenizations are checked to spell the same bytes, aligned in one batched call, and padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignment import AlignmentStats, align_text_batch, encode_continuation
from gold.data import (
    TrainBatch,
    check_prompts,
    check_same_bytes,
    completion_text,
    pad_id,
    side_inputs,
)
from gold.losses import AlignedBatch, PairTables


@dataclass(frozen=True)
class Collator:
    """Turns (prompt ids, completion ids) of both sides into a :class:`TrainBatch`.

    Attributes:
        student_tokenizer / teacher_tokenizer: fast tokenizers.
        tables: the pair's vocabulary tables (built once, :meth:`PairTables.build`).
        max_completion_length: completions are cut to this many student tokens.
        max_prompt_length: longer prompts raise (None: no limit).
        max_edit_fraction: alignment tolerance for tokenizer rewrites.
    """

    student_tokenizer: Any
    teacher_tokenizer: Any
    tables: PairTables
    max_completion_length: int
    max_prompt_length: int | None = None
    max_edit_fraction: float = 0.5

    def student_completion_ids(self, completions: Sequence[str]) -> list[list[int]]:
        """Student ids of given completion texts (dataset rows, teacher samples), cut to the limit."""
        return [encode_continuation(self.student_tokenizer, c)[: self.max_completion_length] for c in completions]

    def __call__(
        self,
        student_prompts: Sequence[Sequence[int]],
        teacher_prompts: Sequence[Sequence[int]],
        student_completions: Sequence[Sequence[int]],
        *,
        source: str,
    ) -> TrainBatch:
        """Build the batch.

        Args:
            student_prompts: B student prompt id lists.
            teacher_prompts: B teacher prompt id lists (the teacher's own rendering).
            student_completions: B student completion id lists (given or sampled).
            source: "dataset", "student" or "teacher", kept for metrics.
        """
        check_prompts(student_prompts, role="student", limit=self.max_prompt_length)
        check_prompts(teacher_prompts, role="teacher", limit=self.max_prompt_length)
        student_ids, texts = [], []
        for ids in student_completions:
            kept, text = completion_text(self.student_tokenizer, list(ids)[: self.max_completion_length])
            student_ids.append(kept)
            texts.append(text)
        teacher_ids = [encode_continuation(self.teacher_tokenizer, text) for text in texts]
        for index, (ids, text) in enumerate(zip(teacher_ids, texts, strict=True)):
            check_same_bytes(self.teacher_tokenizer, ids, text, index=index)
        alignments = align_text_batch(self.student_tokenizer, self.teacher_tokenizer, texts, student_ids=student_ids,
                                      teacher_ids=teacher_ids, max_edit_fraction=self.max_edit_fraction)  # fmt: skip
        student = side_inputs(student_prompts, student_ids, pad_id=pad_id(self.student_tokenizer))
        teacher = side_inputs(teacher_prompts, teacher_ids, pad_id=pad_id(self.teacher_tokenizer))
        aligned = AlignedBatch(
            student_ids=student.input_ids[:, student.prompt_width - 1 :],
            teacher_ids=teacher.input_ids[:, teacher.prompt_width - 1 :],
            student_groups=_loss_view_groups([a.student_groups for a in alignments], student.logits_to_keep),
            teacher_groups=_loss_view_groups([a.teacher_groups for a in alignments], teacher.logits_to_keep),
            tables=self.tables,
            stats=AlignmentStats.combine([a.stats for a in alignments]),
        )
        return TrainBatch(student, teacher, aligned, tuple(texts), source)


def _loss_view_groups(groups: Sequence[Any], width: int) -> torch.Tensor:
    """(B, width) group of each loss-view column: -1 for the last prompt token and padding."""
    out = torch.full((len(groups), width), -1, dtype=torch.int64)
    for b, row in enumerate(groups):
        out[b, 1 : 1 + len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return out
