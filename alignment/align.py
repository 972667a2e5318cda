"""Align a student and a teacher tokenization of the same bytes.

Shape legend: Ts / Tt student / teacher tokens, G groups.

Entry points: :func:`align_texts` (tokenize a text with both tokenizers), :func:`align_ids` (two id
sequences, e.g. a sampled completion and the teacher's encoding of its bytes), and the batched
:func:`align_batch` / :func:`align_text_batch`, equal to per-example calls.

When both sides spell the same bytes the alignment is exact. When they differ (a normalizer rewrote
the text, a SentencePiece model added a space) the boundaries are mapped through edit operations
(:mod:`alignment.fuzzy`), the groups touching an edit are marked approximate and the bytes counted.
When both tokenizers rewrote a text the same way (one normalizer on both sides, or one tokenizer
against itself), their streams agree byte for byte: they are aligned to each other exactly, in the
rewritten stream's coordinates, and the rewrite is counted apart (``stats.rewritten_bytes``).
A rewrite that the tokenizer's own normalizer explains (Qwen's NFC) is expected at any size; any
other difference larger than ``max_edit_fraction`` of the bytes (counted on both strings) means the
tokenizer does not reproduce the text at all, and raises instead of giving silently wrong groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alignment.bytespans import TokenBytesTable, TokenizerBytesError, token_bytes_table
from alignment.fuzzy import ByteMapping, identity_mapping, map_positions
from alignment.groups import SideTokens, group_batch
from alignment.render import render_html
from alignment.specials import encode_text
from alignment.stats import AlignmentStats, compute_stats

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_MAX_EDIT_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class Alignment:
    """A student and a teacher tokenization of ``text_bytes``, grouped at shared byte boundaries.

    Attributes:
        student_ids: (Ts,) int64.
        teacher_ids: (Tt,) int64.
        student_groups: (Ts,) int64, group of each student token; -1 outside every group
            (special tokens, a truncated tail).
        teacher_groups: (Tt,) int64, likewise for the teacher.
        group_bytes: (G, 2) int64, ``[start, end)`` of each group in ``text_bytes``.
        approximate: (G,) bool, groups whose bytes differ between the two streams.
        text_bytes: the bytes aligned: the text; the two sides' common stream when both tokenizers
            rewrote the text the same way (then ``stats.rewritten_bytes > 0``); the student's stream
            (the longer one when one side is a truncation of the other) for :func:`align_ids`.
        student_spans: (Ts, 2) int64 byte span of each student token in ``text_bytes``.
        teacher_spans: (Tt, 2) int64 byte span of each teacher token in ``text_bytes``.
        stats: coverage statistics.
    """

    student_ids: IntArray
    teacher_ids: IntArray
    student_groups: IntArray
    teacher_groups: IntArray
    group_bytes: IntArray
    approximate: BoolArray
    text_bytes: bytes
    student_spans: IntArray
    teacher_spans: IntArray
    stats: AlignmentStats

    @property
    def num_groups(self) -> int:
        return int(self.group_bytes.shape[0])

    def group_text(self, group: int) -> bytes:
        """The bytes of one group."""
        start, end = self.group_bytes[group]
        return self.text_bytes[start:end]

    def _repr_html_(self) -> str:
        return render_html(self)

    def student_positions(self, group: int) -> IntArray:
        """Positions of the student tokens in one group."""
        return np.flatnonzero(self.student_groups == group).astype(np.int64)

    def teacher_positions(self, group: int) -> IntArray:
        """Positions of the teacher tokens in one group."""
        return np.flatnonzero(self.teacher_groups == group).astype(np.int64)


@dataclass(frozen=True)
class _Side:
    ids: IntArray
    special: BoolArray
    mapping: ByteMapping


@dataclass(frozen=True)
class _Spelled:
    """One side's (T,) ids of a text, their (T,) byte lengths, the bytes they spell, the edit fraction allowed."""

    ids: IntArray
    lengths: IntArray
    stream: bytes
    limit: float


def align_ids(
    student_tokenizer: Any,
    student_ids: Any,
    teacher_tokenizer: Any,
    teacher_ids: Any,
    *,
    starts_text: bool = True,
    max_edit_fraction: float = DEFAULT_MAX_EDIT_FRACTION,
) -> Alignment:
    """Align two id sequences; the student's bytes are the reference when the streams differ.

    Args:
        student_tokenizer: the student's fast tokenizer.
        student_ids: (Ts,) ids.
        teacher_tokenizer: the teacher's fast tokenizer.
        teacher_ids: (Tt,) ids.
        starts_text: both sequences encode a text from its start (see :func:`token_byte_spans`).
        max_edit_fraction: most bytes that may differ between the streams before this raises.
    """
    return align_batch(
        student_tokenizer,
        [student_ids],
        teacher_tokenizer,
        [teacher_ids],
        starts_text=starts_text,
        max_edit_fraction=max_edit_fraction,
    )[0]


def align_texts(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    text: str,
    *,
    max_edit_fraction: float = DEFAULT_MAX_EDIT_FRACTION,
) -> Alignment:
    """Tokenize ``text`` with both tokenizers (as plain text, no BOS/EOS) and align.

    Args:
        student_tokenizer: the student's fast tokenizer.
        teacher_tokenizer: the teacher's fast tokenizer.
        text: any text; special-token strings inside it stay text.
        max_edit_fraction: most bytes a tokenizer may change before this raises.
    """
    return align_text_batch(student_tokenizer, teacher_tokenizer, [text], max_edit_fraction=max_edit_fraction)[0]


def align_text_batch(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    texts: Sequence[str],
    *,
    student_ids: Sequence[Any] | None = None,
    teacher_ids: Sequence[Any] | None = None,
    max_edit_fraction: float = DEFAULT_MAX_EDIT_FRACTION,
) -> list[Alignment]:
    """:func:`align_texts` for many texts, grouped in one vectorized pass.

    Args:
        student_tokenizer: the student's fast tokenizer.
        teacher_tokenizer: the teacher's fast tokenizer.
        texts: B texts, the reference bytes.
        student_ids: B id sequences that encode ``texts`` (e.g. sampled ones); default: encode them.
        teacher_ids: likewise for the teacher.
        max_edit_fraction: most bytes a tokenizer may change before this raises.

    Returns:
        B alignments. ``text_bytes`` is the text, except where both sides spell the same rewrite of it
        (see :class:`Alignment`).
    """
    student_table = token_bytes_table(student_tokenizer)
    teacher_table = token_bytes_table(teacher_tokenizer)
    students: list[_Side] = []
    teachers: list[_Side] = []
    references: list[bytes] = []
    rewritten: list[int] = []
    for index, text in enumerate(texts):
        text_bytes = text.encode("utf-8")
        s_ids = encode_text(student_tokenizer, text) if student_ids is None else student_ids[index]
        t_ids = encode_text(teacher_tokenizer, text) if teacher_ids is None else teacher_ids[index]
        student = _spell(student_tokenizer, student_table, s_ids, text, max_edit_fraction)
        teacher = _spell(teacher_tokenizer, teacher_table, t_ids, text, max_edit_fraction)
        reference, rewritten_bytes = text_bytes, 0
        if student.stream == teacher.stream != text_bytes:
            # Both tokenizers rewrote the text the same way (one normalizer on both sides, one tokenizer
            # against itself): the sides predict the same bytes, so the rewritten stream is the reference
            # and the groups are exact. Mapping each side onto the text instead would mark every group
            # touching the rewrite approximate, and proportional mapping inside a rewritten block (NFC
            # reorders stacked marks) can collapse token ends and merge groups. The rewrite is still
            # checked against the text, so that ids of another text raise as they do on one side.
            rewrite = map_positions(student.stream, text_bytes, np.zeros(0, dtype=np.int64))
            _check_edits(rewrite, student.stream, text_bytes, "student", student.limit)
            _check_edits(rewrite, teacher.stream, text_bytes, "teacher", teacher.limit)
            reference, rewritten_bytes = student.stream, rewrite.edited_bytes
        for table, side, role, sides in (
            (student_table, student, "student", students),
            (teacher_table, teacher, "teacher", teachers),
        ):
            sides.append(
                _side_onto(table, side.ids, side.lengths, side.stream, reference, role, side.limit, prefix_ok=False)
            )
        references.append(reference)
        rewritten.append(rewritten_bytes)
    return _assemble(students, teachers, references, rewritten)


def _spell(tokenizer: Any, table: TokenBytesTable, raw_ids: Any, text: str, max_edit_fraction: float) -> _Spelled:
    """What ``raw_ids`` ((T,) ids that encode ``text`` from its start) spell, and how far it may differ."""
    ids = np.asarray(raw_ids, dtype=np.int64).reshape(-1)
    lengths = table.sequence_lengths(ids, starts_text=_prefix_was_added(table, ids, text.encode("utf-8")))
    stream = table.spell(ids, lengths)
    # a rewrite that the tokenizer's own normalizer explains (NFC) is expected, however large
    limit = 1.0 if stream == normalized(tokenizer, text) else max_edit_fraction
    return _Spelled(ids, lengths, stream, limit)


def align_batch(
    student_tokenizer: Any,
    student_ids: Sequence[Any],
    teacher_tokenizer: Any,
    teacher_ids: Sequence[Any],
    *,
    starts_text: bool = True,
    max_edit_fraction: float = DEFAULT_MAX_EDIT_FRACTION,
) -> list[Alignment]:
    """:func:`align_ids` for many examples, grouped in one vectorized pass.

    Args:
        student_tokenizer: the student's fast tokenizer.
        student_ids: B sequences of student ids (no padding).
        teacher_tokenizer: the teacher's fast tokenizer.
        teacher_ids: B sequences of teacher ids (no padding).
        starts_text: every sequence encodes a text from its start.
        max_edit_fraction: most bytes that may differ between two streams before this raises.
    """
    if len(student_ids) != len(teacher_ids):
        raise ValueError(f"{len(student_ids)} student sequences but {len(teacher_ids)} teacher sequences")
    student_table = token_bytes_table(student_tokenizer)
    teacher_table = token_bytes_table(teacher_tokenizer)
    students, teachers, references = [], [], []
    for raw_student, raw_teacher in zip(student_ids, teacher_ids, strict=True):
        s_ids = np.asarray(raw_student, dtype=np.int64).reshape(-1)
        t_ids = np.asarray(raw_teacher, dtype=np.int64).reshape(-1)
        s_lengths = student_table.sequence_lengths(s_ids, starts_text=starts_text)
        t_lengths = teacher_table.sequence_lengths(t_ids, starts_text=starts_text)
        s_stream, t_stream = student_table.spell(s_ids, s_lengths), teacher_table.spell(t_ids, t_lengths)
        # a truncated side spells a prefix of the other: exact up to the last shared boundary
        if s_stream.startswith(t_stream) or t_stream.startswith(s_stream):
            reference = max(s_stream, t_stream, key=len)
        else:
            reference = s_stream
        students.append(_side_onto(student_table, s_ids, s_lengths, s_stream, reference, "student", max_edit_fraction))
        teachers.append(_side_onto(teacher_table, t_ids, t_lengths, t_stream, reference, "teacher", max_edit_fraction))
        references.append(reference)
    # two id sequences carry no text that both could have rewritten: the streams are the truth
    return _assemble(students, teachers, references, [0] * len(references))


def normalized(tokenizer: Any, text: str) -> bytes:
    """The text after the tokenizer's normalizer, with SentencePiece's ``▁`` read back as spaces."""
    normalizer = getattr(tokenizer, "backend_tokenizer", tokenizer).normalizer
    result = normalizer.normalize_str(text) if normalizer is not None else text
    return str(result).replace("\u2581", " ").encode("utf-8")


def text_stream(tokenizer: Any, ids: Any, text: bytes) -> bytes:
    """The bytes ``ids`` spell when they encode ``text`` from its start.

    A SentencePiece dummy prefix is dropped unless the text itself starts with a space (see
    :func:`token_byte_spans`). Compare the result with ``text`` (or :func:`normalized`) to check that a
    tokenization really is of that text.
    """
    table = token_bytes_table(tokenizer)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return table.sequence_bytes(ids, starts_text=_prefix_was_added(table, ids, text))


def _prefix_was_added(table: TokenBytesTable, ids: IntArray, reference: bytes) -> bool:
    """Whether the first token's leading space is a synthetic dummy prefix.

    A Metaspace pre-tokenizer prepends ``▁`` only when the text does not already start with a space,
    so the same first piece ``▁a`` spells ``"a"`` or ``" a"``; the text tells which. SentencePiece reads
    a literal ``▁`` as a space (``"▁a"`` and ``" a"`` give the same ids), so a text starting with one got
    no prefix either: the piece spells that space, and dropping it would lose a byte of the text.
    """
    spaced = reference.startswith(b" ") or (table.kind == "sentencepiece" and reference.startswith("\u2581".encode()))
    return table.prefix_space and not spaced


def _side_onto(
    table: TokenBytesTable,
    ids: IntArray,
    lengths: IntArray,
    stream: bytes,
    reference: bytes,
    role: str,
    max_edit_fraction: float,
    *,
    prefix_ok: bool = True,
) -> _Side:
    """One side's token ends expressed in ``reference`` coordinates (``lengths``: (T,) byte lengths).

    ``prefix_ok``: a stream that spells a prefix of the reference is a truncation, exact as far as
    it goes (ids); for a text, every byte must be accounted for, so a prefix is an edit.
    """
    ends = np.cumsum(lengths).astype(np.int64)
    if stream == reference or (prefix_ok and reference.startswith(stream)):
        mapping = identity_mapping(ends)
    else:
        mapping = map_positions(stream, reference, ends)
        _check_edits(mapping, stream, reference, role, max_edit_fraction)
    return _Side(ids, table.special_mask[ids], mapping)


def _check_edits(mapping: ByteMapping, stream: bytes, reference: bytes, role: str, max_edit_fraction: float) -> None:
    """Raise when ``stream`` differs from ``reference`` in more than ``max_edit_fraction`` of both strings' bytes."""
    if mapping.edited_bytes > max_edit_fraction * max(len(reference) + len(stream), 1):
        raise TokenizerBytesError(_mismatch_message(role, stream, reference, mapping, max_edit_fraction))


def _mismatch_message(role: str, stream: bytes, reference: bytes, mapping: ByteMapping, limit: float) -> str:
    first = next((i for i, (a, b) in enumerate(zip(stream, reference, strict=False)) if a != b), None)
    if first is None:
        first = min(len(stream), len(reference))
    return (
        f"the {role} tokenizer's bytes do not reproduce the text: {mapping.edited_bytes} of "
        f"{len(stream) + len(reference)} bytes (both sides) differ (limit {limit:.0%}); first difference at byte "
        f"{first}: tokens spell {stream[first : first + 24]!r}, text has {reference[first : first + 24]!r}. "
        "Check that both sides tokenized the same text with this tokenizer, or raise max_edit_fraction "
        "if the tokenizer's normalizer is expected to rewrite this much."
    )


def _assemble(
    students: list[_Side], teachers: list[_Side], references: list[bytes], rewritten: list[int]
) -> list[Alignment]:
    """Group the B examples in one pass; ``rewritten``: B counts of bytes both sides rewrote alike."""
    if not references:
        return []
    groupings = group_batch(
        [SideTokens(s.mapping.positions, s.special) for s in students],
        [SideTokens(t.mapping.positions, t.special) for t in teachers],
        [len(r) for r in references],
        [np.concatenate([s.mapping.edits, t.mapping.edits]) for s, t in zip(students, teachers, strict=True)],
    )
    out = []
    for student, teacher, reference, rewritten_bytes, grouping in zip(
        students, teachers, references, rewritten, groupings, strict=True
    ):
        stats = compute_stats(
            student_groups=grouping.student_groups,
            teacher_groups=grouping.teacher_groups,
            student_special=student.special,
            teacher_special=teacher.special,
            group_bytes=grouping.group_bytes,
            approximate=grouping.approximate,
            edited_bytes=student.mapping.edited_bytes + teacher.mapping.edited_bytes,
            rewritten_bytes=rewritten_bytes,
        )
        out.append(
            Alignment(
                student_ids=student.ids,
                teacher_ids=teacher.ids,
                student_groups=grouping.student_groups,
                teacher_groups=grouping.teacher_groups,
                group_bytes=grouping.group_bytes,
                approximate=grouping.approximate,
                text_bytes=reference,
                student_spans=_spans(student.mapping.positions),
                teacher_spans=_spans(teacher.mapping.positions),
                stats=stats,
            )
        )
    return out


def _spans(ends: IntArray) -> IntArray:
    starts = np.concatenate([[0], ends])[:-1].astype(np.int64)
    return np.stack([starts, ends], axis=1).astype(np.int64)
