"""Column pairs of groups whose last tokens start at different bytes ("shifted" groups).

A group's chain-rule row (``gold.losses.merge``) gives, in column ``v``, the probability of the group's bytes up
to its last token, then ``v``: the string ``prefix + bytes(v)``. When the two sides' last tokens start at the same
byte the prefixes are equal and the vocabulary map (identical bytes) pairs columns that are the same string. When
they start at different bytes (Llama-3 ``123`` against Qwen2.5 ``1``·``2``·``3``), one prefix extends the other by
a byte string ``D`` and the same string is ``prefix_S + bytes(v) == prefix_T + bytes(w)``: with the student ahead,
teacher ``w = D + bytes(v)`` (``123`` ↔ ``3``, ``124`` ↔ ``4``); with the teacher ahead, student ``v = D + bytes(w)``.
:class:`ShiftedPairs` finds those pairs per ``D`` (cached: digit runs, CJK characters and indentation repeat);
:func:`group_shifts` finds each group's ``D``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from alignment.align import Alignment
from alignment.bytespans import token_bytes_table
from alignment.vocab import VocabMap, _text_tokens

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class GroupShift:
    """A group whose last tokens start at different bytes.

    Attributes:
        group: the group's index in its alignment.
        shift: ``D``, the bytes by which the longer prefix extends the shorter.
        student_ahead: the student's last token starts later (its prefix is the longer one).
    """

    group: int
    shift: bytes
    student_ahead: bool


def group_shifts(alignment: Alignment) -> list[GroupShift]:
    """The shifted groups of an alignment. Approximate groups (bytes a normalizer rewrote) are left out: their
    two byte streams differ, so no string is the same on both sides by construction."""
    student_start = _last_starts(alignment.student_groups, alignment.student_spans, alignment.num_groups)
    teacher_start = _last_starts(alignment.teacher_groups, alignment.teacher_spans, alignment.num_groups)
    shifted = (student_start >= 0) & (teacher_start >= 0) & (student_start != teacher_start) & ~alignment.approximate
    out = []
    for group in np.flatnonzero(shifted).tolist():
        low, high = sorted((int(student_start[group]), int(teacher_start[group])))
        out.append(GroupShift(group, alignment.text_bytes[low:high], bool(student_start[group] > teacher_start[group])))
    return out


def _last_starts(groups: IntArray, spans: IntArray, num_groups: int) -> IntArray:
    """(G,) byte where each group's last token starts (-1 for a group without tokens on this side)."""
    last = np.full(num_groups, -1, dtype=np.int64)
    members = np.flatnonzero(groups >= 0)
    np.maximum.at(last, groups[members], members)
    return np.where(last >= 0, spans[np.maximum(last, 0), 0], -1)


@dataclass
class _PrefixIndex:
    """Text tokens of one side sorted by their bytes, to list the tokens that start with given bytes."""

    pieces: list[bytes]
    ids: list[int]
    by_bytes: dict[bytes, int]

    @classmethod
    def of(cls, tokens: dict[bytes, int]) -> _PrefixIndex:
        ordered = sorted(tokens.items())
        return cls([p for p, _ in ordered], [i for _, i in ordered], tokens)

    def starting_with(self, head: bytes) -> list[tuple[bytes, int]]:
        """(rest after ``head``, id) of every token that starts with ``head`` and is longer than it."""
        found, at = [], bisect.bisect_left(self.pieces, head)
        while at < len(self.pieces) and self.pieces[at].startswith(head):
            if len(self.pieces[at]) > len(head):
                found.append((self.pieces[at][len(head) :], self.ids[at]))
            at += 1
        return found


@dataclass
class ShiftedPairs:
    """Column pairs of shifted groups for a (student, teacher) tokenizer pair, per shift, cached.

    Text tokens only (as :class:`alignment.VocabMap`, one id per byte string); special tokens spell no bytes.
    """

    student: _PrefixIndex
    teacher: _PrefixIndex
    _cache: dict[tuple[bytes, bool], tuple[IntArray, IntArray]] = field(default_factory=dict)

    @classmethod
    def build(cls, student_tokenizer: Any, teacher_tokenizer: Any) -> ShiftedPairs:
        student = _text_tokens(token_bytes_table(student_tokenizer), student_tokenizer)
        teacher = _text_tokens(token_bytes_table(teacher_tokenizer), teacher_tokenizer)
        return cls(_PrefixIndex.of(student), _PrefixIndex.of(teacher))

    @classmethod
    def of(cls, vocab: VocabMap) -> ShiftedPairs:
        """From a :class:`alignment.VocabMap` of the same pair: its text tokens, without reading the vocabularies
        again."""
        return cls(_PrefixIndex.of(vocab.student_tokens), _PrefixIndex.of(vocab.teacher_tokens))

    def pairs(self, shift: bytes, *, student_ahead: bool) -> tuple[IntArray, IntArray]:
        """(student ids, teacher ids), pairwise, whose columns spell the same string in a group shifted by
        ``shift``: ``bytes(w) == shift + bytes(v)`` with the student ahead, ``bytes(v) == shift + bytes(w)``
        otherwise. Sorted by student id."""
        key = (shift, student_ahead)
        if key not in self._cache:
            ahead, behind = (self.student, self.teacher) if student_ahead else (self.teacher, self.student)
            found = [(ahead.by_bytes[rest], other) for rest, other in behind.starting_with(shift)
                     if rest in ahead.by_bytes]  # fmt: skip
            pairs = np.asarray(sorted(found), dtype=np.int64).reshape(-1, 2)
            student_ids, teacher_ids = (pairs[:, 0], pairs[:, 1]) if student_ahead else (pairs[:, 1], pairs[:, 0])
            if not student_ahead:
                order = np.argsort(student_ids, kind="stable")
                student_ids, teacher_ids = student_ids[order], teacher_ids[order]
            self._cache[key] = (student_ids.copy(), teacher_ids.copy())
        return self._cache[key]
