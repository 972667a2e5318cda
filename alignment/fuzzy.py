"""Map token boundaries of a byte stream onto a reference byte string that differs from it.

Used when a tokenizer's bytes are not the text's bytes: a normalizer rewrote it (Qwen's NFC, BERT's
lower-casing), or a SentencePiece model dropped or added spaces. The two byte strings are aligned
with rapidfuzz's Levenshtein edit operations; positions inside equal blocks map exactly, positions
inside edited blocks map proportionally (monotone), and every edited region is reported so that the
groups touching it can be marked approximate. Nothing is dropped or invented: the mapped boundaries
still partition the reference bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rapidfuzz.distance import Levenshtein


@dataclass(frozen=True)
class ByteMapping:
    """Where a stream's positions land in the reference bytes.

    Attributes:
        positions: (T,) int64, mapped positions (token ends) in reference coordinates.
        edits: (K, 2) int64, ``[start, end)`` reference ranges that differ from the stream; an empty
            range ``[p, p)`` marks stream bytes that the reference lacks at position ``p``.
        edited_bytes: number of stream and reference bytes involved in edits.
    """

    positions: npt.NDArray[np.int64]
    edits: npt.NDArray[np.int64]
    edited_bytes: int


def identity_mapping(positions: npt.NDArray[np.int64]) -> ByteMapping:
    """The mapping of a stream that equals the reference."""
    return ByteMapping(positions, np.zeros((0, 2), dtype=np.int64), 0)


def map_positions(stream: bytes, reference: bytes, positions: npt.NDArray[np.int64]) -> ByteMapping:
    """Map positions of ``stream`` onto ``reference`` through their edit operations.

    Args:
        stream: the bytes a tokenizer's ids spell.
        reference: the bytes to align to (the text, or the other side's stream).
        positions: (T,) int64, non-decreasing positions in ``stream`` (token ends).

    Returns:
        The mapped positions, non-decreasing, with the edited reference ranges.
    """
    if stream == reference:
        return identity_mapping(positions)
    ops = Levenshtein.opcodes(stream, reference)
    table = np.asarray([(op.src_start, op.src_end, op.dest_start, op.dest_end) for op in ops], dtype=np.int64).reshape(
        -1, 4
    )
    src_start, src_end, dest_start, dest_end = table.T
    equal = np.asarray([op.tag == "equal" for op in ops], dtype=bool)
    # first block whose source range reaches the position: an insertion before a boundary is then
    # attributed to the following token
    block = np.clip(np.searchsorted(src_end, positions, side="left"), 0, len(table) - 1)
    src_len = src_end[block] - src_start[block]
    dest_len = dest_end[block] - dest_start[block]
    offset = positions - src_start[block]
    scaled = np.where(src_len > 0, (offset * dest_len) // np.maximum(src_len, 1), dest_len)
    mapped = dest_start[block] + np.where(equal[block], offset, scaled)
    # the stream's end is the reference's end: trailing reference bytes join the last token
    mapped = np.where(positions >= len(stream), len(reference), mapped)
    mapped = np.maximum.accumulate(np.clip(mapped, 0, len(reference))) if mapped.size else mapped
    edit_rows = table[~equal]
    edits = edit_rows[:, 2:4].copy()
    edited = int((edit_rows[:, 1] - edit_rows[:, 0]).sum() + (edit_rows[:, 3] - edit_rows[:, 2]).sum())
    return ByteMapping(mapped.astype(np.int64), edits, edited)
