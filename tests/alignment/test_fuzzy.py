"""Boundary mapping through edit operations."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from alignment.fuzzy import map_positions


def test_equal_streams_map_identically() -> None:
    mapping = map_positions(b"abc", b"abc", np.array([1, 3]))
    assert mapping.positions.tolist() == [1, 3] and mapping.edited_bytes == 0


def test_inserted_space_shifts_later_boundaries() -> None:
    # stream "ab cd" vs reference "ab  cd": one space inserted
    mapping = map_positions(b"ab cd", b"ab  cd", np.array([2, 3, 5]))
    assert mapping.positions.tolist()[-1] == 6 and mapping.positions.tolist()[0] == 2
    assert mapping.edited_bytes == 1 and mapping.edits.shape == (1, 2)


def test_nfc_replacement_is_an_edit() -> None:
    stream, reference = "café".encode(), "cafe\u0301".encode()
    mapping = map_positions(stream, reference, np.array([3, len(stream)]))
    assert mapping.positions.tolist() == [3, len(reference)]
    assert mapping.edits.shape[0] >= 1


@given(
    stream=st.binary(max_size=30),
    reference=st.binary(max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_mapped_positions_are_monotone_and_in_range(stream: bytes, reference: bytes, cuts: list[int]) -> None:
    positions = np.asarray(sorted(min(c, len(stream)) for c in [*cuts, len(stream)]), dtype=np.int64)
    mapping = map_positions(stream, reference, positions)
    assert (np.diff(mapping.positions) >= 0).all()
    assert mapping.positions.min() >= 0 and mapping.positions.max() <= len(reference)
    assert mapping.positions[-1] == len(reference)  # the stream's end is the reference's end
