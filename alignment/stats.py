"""Coverage statistics of an alignment: how much is 1:1, how big groups get, what is approximate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class AlignmentStats:
    """Counts that say how healthy an alignment is; additive over examples (see :meth:`combine`).

    Attributes:
        num_groups: groups in total.
        one_to_one_groups: groups of exactly one student and one teacher token.
        max_group_size: most tokens one side puts in a group.
        student_tokens / teacher_tokens: tokens in total, special tokens included.
        student_grouped / teacher_grouped: tokens that belong to a group.
        student_special / teacher_special: special (zero-width) tokens.
        aligned_bytes: bytes covered by groups.
        approximate_groups: groups touching bytes where the two streams differ.
        approximate_bytes: bytes inside approximate groups.
        edited_bytes: bytes involved in edit operations between a side's stream and the aligned bytes
            (both strings counted); these make groups approximate.
        rewritten_bytes: bytes involved in a rewrite of the text that both sides made alike (both
            strings counted, once for the pair): the groups are exact in the rewritten stream, so these
            bytes are not approximate, but the pair was trained on other bytes than the text had.
        size_histogram: ``{"s:t": count}`` of (student tokens, teacher tokens) per group.
    """

    num_groups: int
    one_to_one_groups: int
    max_group_size: int
    student_tokens: int
    teacher_tokens: int
    student_grouped: int
    teacher_grouped: int
    student_special: int
    teacher_special: int
    aligned_bytes: int
    approximate_groups: int
    approximate_bytes: int
    edited_bytes: int
    rewritten_bytes: int
    size_histogram: dict[str, int] = field(default_factory=dict)

    @property
    def one_to_one_fraction(self) -> float:
        """Share of groups that pair one student token with one teacher token."""
        return self.one_to_one_groups / self.num_groups if self.num_groups else 0.0

    @property
    def approximate_fraction(self) -> float:
        """Share of aligned bytes that sit in approximate groups."""
        return self.approximate_bytes / self.aligned_bytes if self.aligned_bytes else 0.0

    @property
    def student_tokens_per_group(self) -> float:
        return self.student_grouped / self.num_groups if self.num_groups else 0.0

    @property
    def teacher_tokens_per_group(self) -> float:
        return self.teacher_grouped / self.num_groups if self.num_groups else 0.0

    def as_dict(self) -> dict[str, object]:
        """All counts plus the derived fractions, for logs and JSON."""
        return {
            **asdict(self),
            "one_to_one_fraction": self.one_to_one_fraction,
            "approximate_fraction": self.approximate_fraction,
            "student_tokens_per_group": self.student_tokens_per_group,
            "teacher_tokens_per_group": self.teacher_tokens_per_group,
        }

    @staticmethod
    def combine(parts: Sequence[AlignmentStats]) -> AlignmentStats:
        """Statistics of several alignments taken together."""
        histogram: dict[str, int] = {}
        for part in parts:
            for key, count in part.size_histogram.items():
                histogram[key] = histogram.get(key, 0) + count
        summed = {
            name: sum(getattr(part, name) for part in parts)
            for name in AlignmentStats.__dataclass_fields__
            if name not in ("max_group_size", "size_histogram")
        }
        largest = max((part.max_group_size for part in parts), default=0)
        return AlignmentStats(**summed, max_group_size=largest, size_histogram=histogram)


def compute_stats(
    *,
    student_groups: IntArray,
    teacher_groups: IntArray,
    student_special: BoolArray,
    teacher_special: BoolArray,
    group_bytes: IntArray,
    approximate: BoolArray,
    edited_bytes: int,
    rewritten_bytes: int,
) -> AlignmentStats:
    """Statistics of one alignment (shapes as in :class:`alignment.Alignment`)."""
    num_groups = int(group_bytes.shape[0])
    student_sizes = np.bincount(student_groups[student_groups >= 0], minlength=num_groups)
    teacher_sizes = np.bincount(teacher_groups[teacher_groups >= 0], minlength=num_groups)
    widths = group_bytes[:, 1] - group_bytes[:, 0]
    # (student size, teacher size) pairs as one integer each, counted by sorting
    base = int(teacher_sizes.max(initial=0)) + 1
    codes, counts = np.unique(student_sizes * base + teacher_sizes, return_counts=True)
    histogram = {f"{c // base}:{c % base}": int(n) for c, n in zip(codes.tolist(), counts.tolist(), strict=True)}
    return AlignmentStats(
        num_groups=num_groups,
        one_to_one_groups=int(((student_sizes == 1) & (teacher_sizes == 1)).sum()),
        max_group_size=int(max(student_sizes.max(initial=0), teacher_sizes.max(initial=0))),
        student_tokens=int(student_groups.shape[0]),
        teacher_tokens=int(teacher_groups.shape[0]),
        student_grouped=int((student_groups >= 0).sum()),
        teacher_grouped=int((teacher_groups >= 0).sum()),
        student_special=int(student_special.sum()),
        teacher_special=int(teacher_special.sum()),
        aligned_bytes=int(widths.sum()),
        approximate_groups=int(approximate.sum()),
        approximate_bytes=int(widths[approximate].sum()),
        edited_bytes=edited_bytes,
        rewritten_bytes=rewritten_bytes,
        size_histogram=histogram,
    )
