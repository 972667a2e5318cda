"""The fast path for one vocabulary on both sides (self-distillation, a teacher of the same family).

Shape legend: T tokens of one example, G groups.

When the student and the teacher spell every id with the same bytes, the teacher can read the student's own
ids, and every token end is a shared boundary: the groups are the tokens themselves (1:1), and nothing needs
to be encoded twice, mapped or intersected. :func:`align_identical` builds exactly the alignment that
:func:`alignment.align_text_batch` builds for the same ids on both sides (tested equal), in one pass of
array arithmetic per example. A text that the ids do not spell byte for byte (a normalizer rewrote it,
replacement characters) takes the general aligner, which measures and checks the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from alignment.align import (
    DEFAULT_MAX_EDIT_FRACTION,
    Alignment,
    _prefix_was_added,
    _spans,
    align_text_batch,
)
from alignment.bytespans import TokenBytesTable, token_bytes_table
from alignment.stats import compute_stats

IntArray = npt.NDArray[np.int64]


def same_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> bool:
    """Whether both tokenizers spell every id with the same bytes (same size, specials and prefix rule),
    so that the teacher can read the student's ids as they are.

    Only what an id spells is compared: two tokenizers with one vocabulary but other merges or normalizers
    count as one (their models read ids, and each id means the same bytes to both); the teacher then reads the
    student's tokenization, which may not be the one its own tokenizer would choose, as a sampled one may not.
    """
    if student_tokenizer is teacher_tokenizer:
        return True
    student, teacher = token_bytes_table(student_tokenizer), token_bytes_table(teacher_tokenizer)
    return (
        student.prefix_space == teacher.prefix_space
        and np.array_equal(student.offsets, teacher.offsets)
        and np.array_equal(student.special_mask, teacher.special_mask)
        and np.array_equal(student.known_mask, teacher.known_mask)
        and np.array_equal(student.buffer, teacher.buffer)
    )


def align_identical(
    tokenizer: Any,
    ids: Sequence[Any],
    texts: Sequence[str],
    *,
    max_edit_fraction: float = DEFAULT_MAX_EDIT_FRACTION,
) -> list[Alignment]:
    """Align B id sequences with themselves: what :func:`alignment.align_text_batch` gives for
    ``student_ids=ids, teacher_ids=ids`` under one vocabulary, built without the general aligner.

    Args:
        tokenizer: the tokenizer both sides share (see :func:`same_vocabulary`).
        ids: B id sequences, each encoding its text from the start.
        texts: B texts the sequences spell.
        max_edit_fraction: passed to the general aligner for a text the ids do not spell exactly.

    Returns:
        B alignments with one group per token that spells bytes (a zero-width token joins the group
        before it, or the first one; special tokens are in none).
    """
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} id sequences but {len(texts)} texts")
    table = token_bytes_table(tokenizer)
    out: list[Alignment | None] = []
    general: list[int] = []
    for index, (raw, text) in enumerate(zip(ids, texts, strict=True)):
        alignment = _one_to_one(table, np.asarray(raw, dtype=np.int64).reshape(-1), text.encode("utf-8"))
        if alignment is None:
            general.append(index)
        out.append(alignment)
    if general:
        chosen = [ids[i] for i in general]
        aligned = align_text_batch(tokenizer, tokenizer, [texts[i] for i in general], student_ids=chosen,
                                   teacher_ids=chosen, max_edit_fraction=max_edit_fraction)  # fmt: skip
        for index, alignment in zip(general, aligned, strict=True):
            out[index] = alignment
    return [a for a in out if a is not None]


def _one_to_one(table: TokenBytesTable, ids: IntArray, text_bytes: bytes) -> Alignment | None:
    """The alignment of (T,) ``ids`` with themselves when they spell ``text_bytes`` exactly, else None."""
    lengths = table.sequence_lengths(ids, starts_text=_prefix_was_added(table, ids, text_bytes))
    if table.spell(ids, lengths) != text_bytes:
        return None
    special = table.special_mask[ids]
    ends = np.cumsum(lengths).astype(np.int64)
    boundaries = np.unique(ends[(~special) & (ends > 0)]).astype(np.int64)  # (G,) group ends, sorted
    groups = _token_groups(ends, special, boundaries)
    starts = np.concatenate([[0], boundaries])[:-1]
    group_bytes = np.stack([starts, boundaries], axis=1).astype(np.int64).reshape(-1, 2)
    approximate = np.zeros(group_bytes.shape[0], dtype=bool)
    stats = compute_stats(
        student_groups=groups, teacher_groups=groups, student_special=special, teacher_special=special,
        group_bytes=group_bytes, approximate=approximate, edited_bytes=0, rewritten_bytes=0,
    )  # fmt: skip
    spans = _spans(ends)
    return Alignment(ids, ids.copy(), groups, groups.copy(), group_bytes, approximate, text_bytes, spans,
                     spans.copy(), stats)  # fmt: skip


def _token_groups(ends: IntArray, special: npt.NDArray[np.bool_], boundaries: IntArray) -> IntArray:
    """(T,) group of each token: the index of the first group end (``boundaries``) at or after its own end (a
    zero-width token at the start joins the first group), -1 for special tokens and when there is no group."""
    index = np.searchsorted(boundaries, np.maximum(ends, 1), side="left")
    return np.where(special | (index >= boundaries.shape[0]), -1, index).astype(np.int64)
