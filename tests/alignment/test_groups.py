"""Vectorized grouping against the byte-level reference definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from alignment.groups import SideTokens, group_batch, mark_approximate
from tests.reference import reference_groups


@st.composite
def sides(draw: st.DrawFn, length: int) -> tuple[list[tuple[int, int]], list[bool]]:
    """A random tokenization of ``length`` bytes with zero-width specials, maybe truncated."""
    cuts = sorted(draw(st.sets(st.integers(1, max(length - 1, 1)), max_size=length)) - {length})
    ends = [c for c in cuts if 0 < c < length] + [length]
    if draw(st.booleans()):  # truncated: drop a random tail of tokens
        ends = ends[: draw(st.integers(0, len(ends)))]
    spans, special, start = [], [], 0
    for end in ends:
        kind = draw(st.integers(0, 7))
        if kind <= 1:  # a zero-width token: special (0) or text, like a dummy-prefix piece (1)
            spans.append((start, start))
            special.append(kind == 0)
        spans.append((start, end))
        special.append(False)
        start = end
    return spans, special


@st.composite
def examples(draw: st.DrawFn) -> tuple[int, tuple, tuple]:
    length = draw(st.integers(0, 40))
    return length, draw(sides(length)), draw(sides(length))


def _side(spans: list[tuple[int, int]], special: list[bool]) -> SideTokens:
    ends = np.asarray([e for _, e in spans], dtype=np.int64).reshape(-1)
    return SideTokens(ends, np.asarray(special, dtype=bool).reshape(-1))


@given(batch=st.lists(examples(), min_size=1, max_size=6))
def test_batch_grouping_equals_reference(batch) -> None:
    students = [_side(*s) for _, s, _ in batch]
    teachers = [_side(*t) for _, _, t in batch]
    empty = [np.zeros((0, 2), dtype=np.int64)] * len(batch)
    result = group_batch(students, teachers, [n for n, _, _ in batch], empty)
    for (_, student, teacher), grouping in zip(batch, result, strict=True):
        ref_s, ref_t, intervals = reference_groups(student[0], student[1], teacher[0], teacher[1])
        assert grouping.student_groups.tolist() == ref_s
        assert grouping.teacher_groups.tolist() == ref_t
        assert [tuple(g) for g in grouping.group_bytes.tolist()] == intervals


@given(batch=st.lists(examples(), min_size=2, max_size=5))
def test_batch_equals_one_example_at_a_time(batch) -> None:
    students = [_side(*s) for _, s, _ in batch]
    teachers = [_side(*t) for _, _, t in batch]
    lengths = [n for n, _, _ in batch]
    empty = [np.zeros((0, 2), dtype=np.int64)] * len(batch)
    together = group_batch(students, teachers, lengths, empty)
    for i in range(len(batch)):
        alone = group_batch([students[i]], [teachers[i]], [lengths[i]], empty[:1])[0]
        assert np.array_equal(alone.student_groups, together[i].student_groups)
        assert np.array_equal(alone.teacher_groups, together[i].teacher_groups)
        assert np.array_equal(alone.group_bytes, together[i].group_bytes)


def _brute_approximate(group_bytes: np.ndarray, edits: np.ndarray) -> list[bool]:
    flags = []
    for start, end in group_bytes.tolist():
        hit = False
        for c, d in edits.tolist():
            hit |= (c < end and d > start) if d > c else (start <= c <= end)
        flags.append(hit)
    return flags


@given(
    cuts=st.sets(st.integers(1, 30), min_size=1, max_size=10),
    edits=st.lists(st.tuples(st.integers(0, 31), st.integers(0, 4)), max_size=5),
)
def test_mark_approximate_equals_brute_force(cuts, edits) -> None:
    ends = np.asarray(sorted(cuts), dtype=np.int64)
    group_bytes = np.stack([np.concatenate([[0], ends[:-1]]), ends], axis=1)
    edit_array = np.asarray([(c, c + w) for c, w in edits], dtype=np.int64).reshape(-1, 2)
    assert mark_approximate(group_bytes, edit_array).tolist() == _brute_approximate(group_bytes, edit_array)


def test_hand_written_case() -> None:
    # student: "ab" "c" | teacher: "a" "bc"  -> one group of 2:2; then "d" vs "d"
    student = SideTokens(np.array([2, 3, 4]), np.zeros(3, dtype=bool))
    teacher = SideTokens(np.array([1, 3, 4]), np.zeros(3, dtype=bool))
    (g,) = group_batch([student], [teacher], [4], [np.zeros((0, 2), dtype=np.int64)])
    assert g.student_groups.tolist() == [0, 0, 1]
    assert g.teacher_groups.tolist() == [0, 0, 1]
    assert g.group_bytes.tolist() == [[0, 3], [3, 4]]
