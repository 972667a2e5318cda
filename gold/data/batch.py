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
from alignment.shifted import ShiftedPairs, group_shifts
from gold.data.byte_bins import first_byte_table, shared_bins
from gold.data.prefix_classes import PrefixClasses, prefix_classes
from gold.models.stops import StopRule, stop_rule


@dataclass(frozen=True)
class PairTables:
    """What the losses need to know about a (student, teacher) tokenizer pair; built once.

    Attributes:
        student_matched: (M,) int64 student ids with a teacher token of identical bytes.
        teacher_matched: (M,) int64 their partners.
        student_bins: (Vs,) int64 first byte of each student token (END_BIN for stop ids, NO_BYTE: none).
        teacher_bins: (Vt,) int64 likewise for the teacher.
        shared_bins: (NUM_BINS,) bool, the bins both sides produce (:func:`gold.losses.byte_marginal.shared_bins`).
        shifted: the column pairs of groups whose last tokens start at different bytes
            (:class:`alignment.ShiftedPairs`; None: such groups use the global map too).
        teacher_tail: the tail column of sparse teacher rows (:mod:`gold.teacher.sparse`), None for a dense teacher.
        prefix_classes: the projection term's classes (:mod:`gold.data.prefix_classes`), built only when asked.
    """

    student_matched: torch.Tensor
    teacher_matched: torch.Tensor
    student_bins: torch.Tensor
    teacher_bins: torch.Tensor
    shared_bins: torch.Tensor
    shifted: ShiftedPairs | None = None
    teacher_tail: int | None = None
    prefix_classes: PrefixClasses | None = None

    @classmethod
    def build(
        cls, student_tokenizer: Any, teacher_tokenizer: Any, *, student_rows: int, teacher_rows: int,
        student_stop: StopRule | None = None, teacher_stop: StopRule | None = None, vocab_match: str = "bytes",
        teacher_tail: int | None = None, with_prefix_classes: bool = False,
    ) -> PairTables:  # fmt: skip
        """Tables for a pair; ``*_rows`` are the models' embedding (logit) sizes (with sparse teacher rows, the tail
        column ``teacher_tail`` included: it partners no student id).

        The two end tokens (``*_stop.end_id``, default from the tokenizers) are a matched pair whatever
        their strings (``<|im_end|>`` ↔ ``<end_of_turn>``): both mean "the completion ends here". Every stop
        id falls in the byte marginal's END bin. ``vocab_match``: "bytes" (canonical bytes, gold's) or "raw"
        (identical piece strings, TRL 1.16's; :meth:`alignment.VocabMap.build_raw`; no shifted pairs).
        ``with_prefix_classes``: build the projection term's classes too (``loss.projection_weight``).
        """
        if vocab_match not in ("bytes", "raw"):
            raise ValueError(f"vocab_match must be 'bytes' or 'raw', got {vocab_match!r}")
        student_stop = student_stop or stop_rule(student_tokenizer)
        teacher_stop = teacher_stop or stop_rule(teacher_tokenizer)
        vocab = (VocabMap.build_raw if vocab_match == "raw" else VocabMap.build)(student_tokenizer, teacher_tokenizer)
        student_matched, teacher_matched = vocab.student_ids, vocab.teacher_ids
        if student_stop.end_id is not None and teacher_stop.end_id is not None:
            # the end pair replaces any pairing of either end id by string
            free = (student_matched != student_stop.end_id) & (teacher_matched != teacher_stop.end_id)
            student_matched = np.append(student_matched[free], student_stop.end_id)
            teacher_matched = np.append(teacher_matched[free], teacher_stop.end_id)
        if teacher_tail is not None and teacher_tail != teacher_rows - 1:
            raise ValueError(f"the teacher's tail column must be its last row ({teacher_rows - 1}), got {teacher_tail}")
        last_teacher_id = teacher_rows if teacher_tail is None else teacher_tail
        keep = (student_matched < student_rows) & (teacher_matched < last_teacher_id)
        student_table, teacher_table = token_bytes_table(student_tokenizer), token_bytes_table(teacher_tokenizer)
        student_ends, teacher_ends = sorted(student_stop.stop_ids), sorted(teacher_stop.stop_ids)
        student_bins = first_byte_table(student_table, num_rows=student_rows, end_ids=student_ends)
        teacher_bins = first_byte_table(teacher_table, num_rows=teacher_rows, end_ids=teacher_ends)
        classes = None
        if with_prefix_classes:
            classes = prefix_classes(student_table, teacher_table, student_rows=student_rows,
                                     teacher_rows=teacher_rows, student_end_ids=student_ends,
                                     teacher_end_ids=teacher_ends)  # fmt: skip
        return cls(
            student_matched=torch.from_numpy(student_matched[keep].astype(np.int64)),
            teacher_matched=torch.from_numpy(teacher_matched[keep].astype(np.int64)),
            student_bins=student_bins,
            teacher_bins=teacher_bins,
            shared_bins=shared_bins(student_bins, teacher_bins),
            shifted=ShiftedPairs.of(vocab) if vocab_match == "bytes" else None,
            teacher_tail=teacher_tail,
            prefix_classes=classes,
        )

    def to(self, device: torch.device | str) -> PairTables:
        classes = None if self.prefix_classes is None else self.prefix_classes.to(device)
        return PairTables(*(t.to(device) for t in (self.student_matched, self.teacher_matched, self.student_bins,
                                                    self.teacher_bins, self.shared_bins)),
                          shifted=self.shifted, teacher_tail=self.teacher_tail, prefix_classes=classes)  # fmt: skip


@dataclass(frozen=True)
class GroupShifts:
    """Column pairs of the batch's shifted groups (:mod:`alignment.shifted`): groups whose last tokens start at
    different bytes, where the vocabulary map would pair columns that are different strings.

    Attributes:
        group_set: (G,) int64, in the batch's (example, group) order: the pair set of each group, -1 where the
            last tokens start together and the global vocabulary map holds.
        student_ids / teacher_ids: per pair set, (P,) int64 ids whose columns spell the same string, pairwise.
    """

    group_set: torch.Tensor
    student_ids: tuple[torch.Tensor, ...]
    teacher_ids: tuple[torch.Tensor, ...]

    @property
    def num_shifted(self) -> int:
        return int((self.group_set >= 0).sum())

    def to(self, device: torch.device | str) -> GroupShifts:
        return GroupShifts(self.group_set.to(device), tuple(t.to(device) for t in self.student_ids),
                           tuple(t.to(device) for t in self.teacher_ids))  # fmt: skip

    @classmethod
    def build(cls, alignments: Sequence[Alignment], scored: Sequence[int], pairs: ShiftedPairs,
              sizes: Sequence[int] | None = None) -> GroupShifts:  # fmt: skip
        """The shifted groups among the first ``scored[i]`` groups of each alignment, with their pairs from ``pairs``;
        example i takes ``sizes[i]`` places of the batch's group order (default ``scored[i]``; more when an end group,
        never shifted, follows its scored groups)."""
        sizes = scored if sizes is None else sizes
        sets: dict[tuple[bytes, bool], int] = {}
        student_ids: list[torch.Tensor] = []
        teacher_ids: list[torch.Tensor] = []
        group_set = torch.full((sum(sizes),), -1, dtype=torch.int64)
        offset = 0
        for alignment, count, size in zip(alignments, scored, sizes, strict=True):
            for shifted in group_shifts(alignment):
                if shifted.group >= count:
                    continue
                key = (shifted.shift, shifted.student_ahead)
                if key not in sets:
                    student, teacher = pairs.pairs(shifted.shift, student_ahead=shifted.student_ahead)
                    sets[key] = len(student_ids)
                    student_ids.append(torch.from_numpy(student))
                    teacher_ids.append(torch.from_numpy(teacher))
                group_set[offset + shifted.group] = sets[key]
            offset += size
        return cls(group_set, tuple(student_ids), tuple(teacher_ids))


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
        shifts: the column pairs of shifted groups (None: every group uses the global vocabulary map).
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_groups: torch.Tensor
    teacher_groups: torch.Tensor
    tables: PairTables
    stats: AlignmentStats
    shifts: GroupShifts | None = None

    def to(self, device: torch.device | str) -> AlignedBatch:
        return AlignedBatch(*(t.to(device) for t in (self.student_ids, self.teacher_ids, self.student_groups,
                                                     self.teacher_groups)),
                            tables=self.tables.to(device), stats=self.stats,
                            shifts=None if self.shifts is None else self.shifts.to(device))  # fmt: skip

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
        shifts = None
        if tables.shifted is not None:
            shifts = GroupShifts.build(alignments, [a.num_groups for a in alignments], tables.shifted)
        return cls(s_ids, t_ids, s_groups, t_groups, tables, stats, shifts)


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
