"""Student ↔ teacher vocabulary map on canonical bytes.

Two tokens match when they spell the same bytes: ``Ġworld`` (byte-level), ``▁world`` (SentencePiece)
and `` world`` all become ``b" world"``, and ``<0xE6>`` becomes ``b"\\xe6"``. Matching raw piece
strings (what TRL's GOLD does) misses every pair whose families write spaces or bytes differently;
:func:`raw_string_overlap` counts that for comparison.

When one side holds several ids with the same bytes (SentencePiece's ``<0x41>`` next to ``A``), the
lowest id stands for them in the map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from alignment.bytespans import TokenBytesTable, token_bytes_table
from alignment.specials import encode_continuation, encode_text

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class NearMatch:
    """An unmatched student token and its closest teacher token by rapidfuzz similarity (0–100)."""

    student_id: int
    teacher_id: int
    score: float


def _text_tokens(table: TokenBytesTable, tokenizer: Any = None) -> dict[bytes, int]:
    """Canonical bytes → the id the tokenizer uses for them, over the non-special, non-empty tokens.

    Several ids can spell the same bytes (SentencePiece byte-fallback ``<0x65>`` and the piece ``e``);
    the one the tokenizer itself produces for that text is kept, so the common piece, not the rarely
    used fallback, carries the match (without a tokenizer: the highest id).
    """
    lengths = table.lengths
    candidates = np.flatnonzero(table.known_mask & ~table.special_mask & (lengths > 0))
    spellings: dict[bytes, list[int]] = {}
    buffer = table.buffer.tobytes()
    for token_id in candidates.tolist():
        spellings.setdefault(buffer[table.offsets[token_id] : table.offsets[token_id + 1]], []).append(token_id)
    return {
        piece: ids[0] if len(ids) == 1 else (_preferred(tokenizer, piece, ids) if tokenizer is not None else max(ids))
        for piece, ids in spellings.items()
    }


def _preferred(tokenizer: Any, piece: bytes, ids: list[int]) -> int:
    """Among ids spelling ``piece``, the one the tokenizer emits for it (else the highest id: byte
    fallbacks come first in SentencePiece vocabularies)."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return max(ids)
    for encoded in (encode_continuation(tokenizer, text), encode_text(tokenizer, text)):
        chosen = [i for i in encoded if i in ids]
        if len(encoded) == 1 and chosen:
            return chosen[0]
    return max(ids)


@dataclass(frozen=True, eq=False)
class VocabMap:
    """Matched token pairs of two vocabularies: text tokens with identical canonical bytes, and
    special tokens with identical strings (``<|im_end|>`` on both sides).

    Attributes:
        student_ids: (M,) int64 student ids with a teacher token of identical bytes (or special string).
        teacher_ids: (M,) int64 the matching teacher ids, pairwise.
        num_text_matched: how many of the pairs are text tokens (the rest are special tokens).
        student_text_tokens: distinct byte strings in the student vocabulary (specials excluded).
        teacher_text_tokens: likewise for the teacher.
    """

    student_ids: IntArray
    teacher_ids: IntArray
    num_text_matched: int
    student_text_tokens: int
    teacher_text_tokens: int
    _student_table: TokenBytesTable
    _teacher_table: TokenBytesTable
    # canonical bytes → id of each side's text tokens (one id per byte string)
    student_tokens: dict[bytes, int] = field(default_factory=dict, repr=False)
    teacher_tokens: dict[bytes, int] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, student_tokenizer: Any, teacher_tokenizer: Any) -> VocabMap:
        """Match every student token to the teacher token with the same canonical bytes."""
        student_table = token_bytes_table(student_tokenizer)
        teacher_table = token_bytes_table(teacher_tokenizer)
        student_tokens = _text_tokens(student_table, student_tokenizer)
        teacher_tokens = _text_tokens(teacher_table, teacher_tokenizer)
        pairs = [(sid, teacher_tokens[piece]) for piece, sid in student_tokens.items() if piece in teacher_tokens]
        num_text = len(pairs)
        # control tokens cover no bytes; the same control string on both sides is the same control
        teacher_specials = _special_tokens(teacher_tokenizer)
        student_specials = _special_tokens(student_tokenizer)
        pairs += [(sid, teacher_specials[name]) for name, sid in student_specials.items() if name in teacher_specials]
        array = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        return cls(
            array[:, 0].copy(),
            array[:, 1].copy(),
            num_text,
            len(student_tokens),
            len(teacher_tokens),
            student_table,
            teacher_table,
            student_tokens,
            teacher_tokens,
        )

    @classmethod
    def build_raw(cls, student_tokenizer: Any, teacher_tokenizer: Any) -> VocabMap:
        """TRL 1.16's matching, for comparison: ids whose piece strings in ``get_vocab()`` are identical (so
        ``Ġthe`` never meets ``▁the``, and a byte-fallback piece ``<0x0A>`` only meets the same spelling), specials
        included. It keeps no byte-keyed tables, so no shifted pairs can be drawn from it."""
        student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        pairs = sorted((sid, teacher_vocab[piece]) for piece, sid in student_vocab.items() if piece in teacher_vocab)
        specials = set(_special_tokens(student_tokenizer)) | set(_special_tokens(teacher_tokenizer))
        num_text = sum(piece not in specials for piece in student_vocab if piece in teacher_vocab)
        array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        student_table, teacher_table = token_bytes_table(student_tokenizer), token_bytes_table(teacher_tokenizer)
        student_count = len(_text_tokens(student_table, student_tokenizer))
        teacher_count = len(_text_tokens(teacher_table, teacher_tokenizer))
        return cls(array[:, 0].copy(), array[:, 1].copy(), num_text, student_count, teacher_count, student_table,
                   teacher_table)  # fmt: skip

    @property
    def num_matched(self) -> int:
        return int(self.student_ids.shape[0])

    @property
    def matched_fraction(self) -> float:
        """Share of the student's distinct text tokens that have a teacher token with the same bytes."""
        return self.num_text_matched / self.student_text_tokens if self.student_text_tokens else 0.0

    @property
    def teacher_matched_fraction(self) -> float:
        """Share of the teacher's distinct text tokens that have a student token with the same bytes."""
        return self.num_text_matched / self.teacher_text_tokens if self.teacher_text_tokens else 0.0

    def student_to_teacher(self) -> IntArray:
        """(Vs,) int64: the matched teacher id of each student id, -1 where none."""
        lookup = np.full(self._student_table.vocab_size, -1, dtype=np.int64)
        lookup[self.student_ids] = self.teacher_ids
        return lookup

    def near_matches(
        self, student_ids: Any = None, *, score_cutoff: float = 80.0, limit: int = 1000
    ) -> list[NearMatch]:
        """Closest teacher token for unmatched student tokens (rapidfuzz ``ratio`` on the bytes).

        Cost grows with (student tokens asked) × (unmatched teacher tokens): pass the ids you care
        about, or rely on ``limit``, which caps how many unmatched student ids are looked at.

        Args:
            student_ids: student ids to look up; default the first ``limit`` unmatched ones.
            score_cutoff: minimum similarity (0–100) for a match to be returned.
            limit: most student ids looked at when ``student_ids`` is not given.
        """
        from rapidfuzz import fuzz, process

        teacher_tokens = _text_tokens(self._teacher_table)
        matched_teacher = set(self.teacher_ids.tolist())
        choices = {tid: piece.decode("latin-1") for piece, tid in teacher_tokens.items() if tid not in matched_teacher}
        if student_ids is None:
            matched = set(self.student_ids.tolist())
            student_ids = [sid for sid in _text_tokens(self._student_table).values() if sid not in matched][:limit]
        found = []
        for sid in student_ids:
            query = self._student_table.token_bytes(int(sid)).decode("latin-1")
            best = process.extractOne(query, choices, scorer=fuzz.ratio, score_cutoff=score_cutoff)
            if best is not None:
                found.append(NearMatch(int(sid), int(best[2]), float(best[1])))
        return found


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return {tok.content: token_id for token_id, tok in backend.get_added_tokens_decoder().items() if tok.special}


def raw_string_overlap(student_tokenizer: Any, teacher_tokenizer: Any) -> int:
    """How many piece strings the two vocabularies share verbatim (TRL's matching), specials excluded."""
    student_vocab = _raw_pieces(student_tokenizer)
    teacher_vocab = _raw_pieces(teacher_tokenizer)
    return len(student_vocab & teacher_vocab)


def _raw_pieces(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    specials = {tok.content for tok in backend.get_added_tokens_decoder().values() if tok.special}
    return set(backend.get_vocab(with_added_tokens=True)) - specials
