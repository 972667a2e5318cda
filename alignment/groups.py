"""Two tokenizations of the same bytes → groups at the byte positions where both end a token.

Shape legend: B examples, Ts / Tt student / teacher tokens of one example, G groups, K edited ranges.

A group boundary is a byte position where *both* sides end a token, so group *g* is a contiguous run
of student tokens and a contiguous run of teacher tokens covering exactly the same bytes. The whole
batch is grouped at once: every example's boundaries are shifted into one global byte axis, shared
boundaries come from one ``intersect1d``, and each token finds its group with one ``searchsorted``.
There is no Python loop over tokens or groups.

Tokens outside every group get ``-1``: special tokens, and tokens past the last shared boundary (one
side was truncated, or its stream ends inside the other side's token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SideTokens:
    """One side's tokens of one example, in the shared byte coordinates.

    Attributes:
        ends: (T,) int64, non-decreasing end position of each token.
        special: (T,) bool, control tokens (never grouped).
    """

    ends: IntArray
    special: BoolArray


@dataclass(frozen=True)
class Grouping:
    """Groups of one example.

    Attributes:
        student_groups: (Ts,) int64 group of each student token, -1 outside every group.
        teacher_groups: (Tt,) int64 group of each teacher token, -1 outside every group.
        group_bytes: (G, 2) int64 ``[start, end)`` of each group in the shared byte coordinates.
        approximate: (G,) bool, groups touching a region where the byte streams differ.
    """

    student_groups: IntArray
    teacher_groups: IntArray
    group_bytes: IntArray
    approximate: BoolArray


def group_batch(
    students: Sequence[SideTokens],
    teachers: Sequence[SideTokens],
    text_lengths: Sequence[int],
    edits: Sequence[IntArray],
) -> list[Grouping]:
    """Group every example of a batch in one vectorized pass.

    Args:
        students: B student sides.
        teachers: B teacher sides.
        text_lengths: B byte lengths of the shared coordinates (the aligned bytes).
        edits: B arrays of shape (K, 2), ranges where a stream differs from the aligned bytes.

    Returns:
        B groupings, equal to grouping each example alone.
    """
    lengths = np.asarray(text_lengths, dtype=np.int64)
    for side, length in zip([*students, *teachers], [*lengths, *lengths], strict=True):
        if side.ends.size and (side.ends[-1] > length or side.ends[0] < 0):
            raise ValueError(f"token ends {side.ends} leave the aligned bytes [0, {length})")
    shift = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (B,)
    shared = _sorted_intersection(_boundaries(students, shift), _boundaries(teachers, shift))
    # groups of example b are shared[first[b]:first[b + 1]]
    first = np.searchsorted(shared, np.append(shift, shift[-1] + lengths[-1] + 1), side="right")
    student_groups = _assign(students, shift, shared, first)
    teacher_groups = _assign(teachers, shift, shared, first)
    result = []
    for b in range(len(students)):
        ends = shared[first[b] : first[b + 1]] - shift[b]
        starts = np.concatenate([[0], ends])[:-1].astype(np.int64)
        group_bytes = np.stack([starts, ends], axis=1)
        approximate = mark_approximate(group_bytes, edits[b])
        result.append(Grouping(student_groups[b], teacher_groups[b], group_bytes, approximate))
    return result


def _boundaries(sides: Sequence[SideTokens], shift: IntArray) -> IntArray:
    """All positive token ends of text tokens, shifted onto the global axis, as a sorted set.

    Ends are non-decreasing within an example and examples are shifted apart, so the concatenation
    is already sorted: dropping repeats is enough (no sort, no hashing).
    """
    parts = [side.ends[(~side.special) & (side.ends > 0)] + shift[b] for b, side in enumerate(sides)]
    merged = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    keep = np.ones(merged.shape[0], dtype=bool)
    keep[1:] = merged[1:] != merged[:-1]
    return merged[keep]


def _sorted_intersection(a: IntArray, b: IntArray) -> IntArray:
    """Elements of sorted set ``a`` that are in sorted set ``b`` (binary search, no re-sort)."""
    if b.shape[0] == 0:
        return b
    index = np.minimum(np.searchsorted(b, a), b.shape[0] - 1)
    shared: IntArray = a[b[index] == a]
    return shared


def _assign(sides: Sequence[SideTokens], shift: IntArray, shared: IntArray, first: IntArray) -> list[IntArray]:
    """Group index of each token: the first shared boundary at or after its end."""
    sizes = [side.ends.shape[0] for side in sides]
    if sum(sizes) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in sides]
    example = np.repeat(np.arange(len(sides)), sizes)  # (sum T,)
    # a zero-width token at an example's start (a dummy-prefix piece) joins its first group
    ends = np.maximum(np.concatenate([side.ends for side in sides]), 1) + shift[example]
    special = np.concatenate([side.special for side in sides])
    index = np.searchsorted(shared, ends, side="left")
    outside = special | (index >= first[example + 1])
    local = np.where(outside, -1, index - first[example]).astype(np.int64)
    return np.split(local, np.cumsum(sizes)[:-1])


def mark_approximate(group_bytes: IntArray, edits: IntArray) -> BoolArray:
    """(G,) bool: groups that overlap an edited range (or hold an empty one, inclusive of edges).

    Args:
        group_bytes: (G, 2) ``[start, end)`` of each group.
        edits: (K, 2) ``[start, end)`` edited ranges; empty ranges mark bytes missing at a position.
    """
    num_groups = group_bytes.shape[0]
    if num_groups == 0 or edits.shape[0] == 0:
        return np.zeros(num_groups, dtype=bool)
    starts, ends = group_bytes[:, 0], group_bytes[:, 1]
    empty = edits[:, 0] == edits[:, 1]
    # non-empty edit [c, d): groups with end > c and start < d; empty edit at c: start <= c <= end
    lo = np.where(empty, np.searchsorted(ends, edits[:, 0], "left"), np.searchsorted(ends, edits[:, 0], "right"))
    hi = np.where(empty, np.searchsorted(starts, edits[:, 0], "right"), np.searchsorted(starts, edits[:, 1], "left"))
    hits = np.zeros(num_groups + 1, dtype=np.int64)
    valid = lo < hi
    np.add.at(hits, lo[valid], 1)
    np.add.at(hits, hi[valid], -1)
    return np.cumsum(hits[:-1]) > 0
