"""The aligned batch the losses consume, and the per-pair tables they need.

Shape legend: B batch, Ts / Tt student / teacher sequence length, Vs / Vt embedding rows, M matched
pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alignment import Alignment, AlignmentStats, VocabMap, token_bytes_table
from gold.losses.byte_marginal import first_byte_table, shared_bins
from gold.stops import StopRule, stop_rule


@dataclass(frozen=True)
class PairTables:
    """What the losses need to know about a (student, teacher) tokenizer pair; built once.

    Attributes:
        student_matched: (M,) int64 student ids with a teacher token of identical bytes.
        teacher_matched: (M,) int64 their partners.
        student_bins: (Vs,) int64 first byte of each student token (END_BIN for stop ids, NO_BYTE: none).
        teacher_bins: (Vt,) int64 likewise for the teacher.
        shared_bins: (NUM_BINS,) bool, the bins both sides produce (:func:`gold.losses.byte_marginal.shared_bins`).
    """

    student_matched: torch.Tensor
    teacher_matched: torch.Tensor
    student_bins: torch.Tensor
    teacher_bins: torch.Tensor
    shared_bins: torch.Tensor

    @classmethod
    def build(
        cls, student_tokenizer: Any, teacher_tokenizer: Any, *, student_rows: int, teacher_rows: int,
        student_stop: StopRule | None = None, teacher_stop: StopRule | None = None,
    ) -> PairTables:  # fmt: skip
        """Tables for a pair; ``*_rows`` are the models' embedding (logit) sizes.

        The two end tokens (``*_stop.end_id``, default from the tokenizers) are a matched pair whatever
        their strings (``<|im_end|>`` ↔ ``<end_of_turn>``): both mean "the completion ends here". Every stop
        id falls in the byte marginal's END bin.
        """
        student_stop = student_stop or stop_rule(student_tokenizer)
        teacher_stop = teacher_stop or stop_rule(teacher_tokenizer)
        vocab = VocabMap.build(student_tokenizer, teacher_tokenizer)
        student_matched, teacher_matched = vocab.student_ids, vocab.teacher_ids
        if student_stop.end_id is not None and teacher_stop.end_id is not None:
            # the end pair replaces any pairing of either end id by string
            free = (student_matched != student_stop.end_id) & (teacher_matched != teacher_stop.end_id)
            student_matched = np.append(student_matched[free], student_stop.end_id)
            teacher_matched = np.append(teacher_matched[free], teacher_stop.end_id)
        keep = (student_matched < student_rows) & (teacher_matched < teacher_rows)
        student_bins = first_byte_table(token_bytes_table(student_tokenizer), num_rows=student_rows,
                                        end_ids=sorted(student_stop.stop_ids))  # fmt: skip
        teacher_bins = first_byte_table(token_bytes_table(teacher_tokenizer), num_rows=teacher_rows,
                                        end_ids=sorted(teacher_stop.stop_ids))  # fmt: skip
        return cls(
            student_matched=torch.from_numpy(student_matched[keep].astype(np.int64)),
            teacher_matched=torch.from_numpy(teacher_matched[keep].astype(np.int64)),
            student_bins=student_bins,
            teacher_bins=teacher_bins,
            shared_bins=shared_bins(student_bins, teacher_bins),
        )

    def to(self, device: torch.device | str) -> PairTables:
        return PairTables(*(t.to(device) for t in (self.student_matched, self.teacher_matched, self.student_bins,
                                                    self.teacher_bins, self.shared_bins)))  # fmt: skip


@dataclass(frozen=True)
class AlignedBatch:
    """Token ids and group indices of both sides, padded, plus alignment statistics.

    Attributes:
        student_ids: (B, Ts) int64.
        teacher_ids: (B, Tt) int64.
        student_groups: (B, Ts) int64 group of each token in its example, -1 outside groups.
        teacher_groups: (B, Tt) int64 likewise; example b has the same groups on both sides.
        tables: the pair's vocabulary map and first-byte tables.
        stats: alignment statistics of the batch.
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_groups: torch.Tensor
    teacher_groups: torch.Tensor
    tables: PairTables
    stats: AlignmentStats

    @property
    def num_groups(self) -> int:
        """Scored groups in the batch (the rows the loss is averaged over), end groups included."""
        return _count_groups(self.student_groups)

    @classmethod
    def from_alignments(
        cls,
        alignments: Sequence[Alignment],
        tables: PairTables,
        *,
        student_prefix: Sequence[Sequence[int]] | None = None,
        teacher_prefix: Sequence[Sequence[int]] | None = None,
        pad_id: int = 0,
    ) -> AlignedBatch:
        """Pad aligned examples into tensors, each side's ids after its own prefix (e.g. a prompt).

        The groups of the aligned part keep their indices; prefix and padding tokens get -1. A
        prefix is needed for the first aligned token to have a predicting logit.
        """
        size = len(alignments)
        s_prefix = student_prefix or [[] for _ in range(size)]
        t_prefix = teacher_prefix or [[] for _ in range(size)]
        s_ids, s_groups = _pad([(list(p), a.student_ids.tolist(), a.student_groups.tolist())
                                for p, a in zip(s_prefix, alignments, strict=True)], pad_id)  # fmt: skip
        t_ids, t_groups = _pad([(list(p), a.teacher_ids.tolist(), a.teacher_groups.tolist())
                                for p, a in zip(t_prefix, alignments, strict=True)], pad_id)  # fmt: skip
        stats = AlignmentStats.combine([a.stats for a in alignments])
        return cls(s_ids, t_ids, s_groups, t_groups, tables, stats)


def _count_groups(groups: torch.Tensor) -> int:
    """Groups of a (B, T) group tensor: each example's groups are numbered 0 … n - 1."""
    if groups.numel() == 0:
        return 0
    return int(torch.where(groups >= 0, groups + 1, 0).amax(dim=1).sum())


def _pad(rows: list[tuple[list[int], list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(p) + len(i) for p, i, _ in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    groups = torch.full((len(rows), width), -1, dtype=torch.int64)
    for b, (prefix, body, body_groups) in enumerate(rows):
        n = len(prefix) + len(body)
        ids[b, :n] = torch.tensor(prefix + body, dtype=torch.int64)
        groups[b, len(prefix) : n] = torch.tensor(body_groups, dtype=torch.int64)
    return ids, groups
