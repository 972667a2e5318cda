"""Token ids → exact UTF-8 byte spans, through a cached ``id → bytes`` table per tokenizer.

Shape legend: T tokens in one sequence, V vocabulary size (embedding rows may exceed it).

The table is built once from the tokenizer's vocabulary, never from offsets, because offsets are
*character* positions: a byte-level token holding half of a multi-byte character has no character
span of its own. Three families are understood:

* byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM, DeepSeek, Tekken): each piece character is one byte
  through the GPT-2 ``bytes_to_unicode`` table;
* SentencePiece-style (Llama-2, Mistral v1/v3, Gemma): ``▁`` is a space, ``<0xNN>`` is byte NN;
  a tokenizer that prepends a dummy ``▁`` to the text gets ``prefix_space=True``;
* WordPiece (BERT): ``##x`` continues a word, any other piece starts one after a space.

Special (control) tokens cover no bytes: they are zero-width and live outside every group. Added
tokens that are *not* special are text and cover their content's bytes.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alignment.specials import special_token_ids

TokenizerKind = Literal["byte_level", "sentencepiece", "wordpiece"]

_SPM_SPACE = "\u2581"


def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: piece character → byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_BYTE_LEVEL = _byte_level_decoder()


class TokenizerBytesError(ValueError):
    """A tokenizer whose pieces cannot be turned into bytes, or whose bytes do not reproduce a text."""


@dataclass(frozen=True, eq=False)
class TokenBytesTable:
    """Every token id's exact bytes, stored as one flat buffer.

    Attributes:
        kind: the piece format that was decoded.
        buffer: (sum of lengths,) uint8, all token bytes concatenated in id order.
        offsets: (V + 1,) int64, token ``i`` is ``buffer[offsets[i]:offsets[i + 1]]``.
        special_mask: (V,) bool, control tokens (zero-width, outside groups).
        known_mask: (V,) bool, ids the tokenizer has a token for.
        prefix_space: the tokenizer prepends a synthetic space to a text (SentencePiece dummy
            prefix, WordPiece word start); the first text token of a sequence loses that byte.
    """

    kind: TokenizerKind
    buffer: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]
    special_mask: npt.NDArray[np.bool_]
    known_mask: npt.NDArray[np.bool_]
    prefix_space: bool

    @property
    def vocab_size(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """(V,) int64 byte length of every token (0 for specials)."""
        return np.diff(self.offsets)

    @property
    def missing_bytes(self) -> set[int]:
        """Byte values no single token spells; a byte-level tokenizer silently drops them from text
        (SmolLM2 lacks 0x04, 0xF1, …), so texts holding them align only approximately."""
        singles = self.offsets[:-1][(self.lengths == 1) & ~self.special_mask]
        return set(range(256)) - set(self.buffer[singles].tolist())

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token (``b""`` for a special token)."""
        self.check_ids(np.asarray([token_id]))
        return self.buffer[self.offsets[token_id] : self.offsets[token_id + 1]].tobytes()

    def check_ids(self, ids: npt.NDArray[np.int64]) -> None:
        """Raise if any id is outside the vocabulary or has no token (e.g. padded embedding rows)."""
        if ids.size == 0:
            return
        bad = (ids < 0) | (ids >= self.vocab_size)
        if not bad.any():
            bad = ~self.known_mask[ids]
        if bad.any():
            first = int(ids[np.flatnonzero(bad)[0]])
            raise TokenizerBytesError(
                f"token id {first} has no token in this tokenizer (vocabulary of {self.vocab_size} ids); "
                "mask embedding rows without a token before sampling, or pass ids this tokenizer produced"
            )

    def sequence_lengths(self, ids: npt.NDArray[np.int64], *, starts_text: bool) -> npt.NDArray[np.int64]:
        """(T,) byte length of each token of one sequence, after removing a synthetic prefix space."""
        ids = np.asarray(ids, dtype=np.int64)
        self.check_ids(ids)
        lengths = self.offsets[ids + 1] - self.offsets[ids]
        if starts_text and self.prefix_space:
            first = self._first_text_token(ids)
            if first is not None and self.buffer[self.offsets[ids[first]]] == 0x20:
                lengths[first] -= 1
        return lengths

    def sequence_bytes(self, ids: npt.NDArray[np.int64], *, starts_text: bool) -> bytes:
        """The bytes a sequence of ids spells (specials contribute nothing), gathered without a loop."""
        ids = np.asarray(ids, dtype=np.int64)
        return self.spell(ids, self.sequence_lengths(ids, starts_text=starts_text))

    def spell(self, ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> bytes:
        """The bytes of ``ids`` given their (T,) lengths from :meth:`sequence_lengths`; a token cut short
        by a removed prefix space keeps its last ``length`` bytes."""
        starts = self.offsets[ids] + (self.offsets[ids + 1] - self.offsets[ids] - lengths)
        total = int(lengths.sum())
        if total == 0:
            return b""
        ends = np.cumsum(lengths)
        # index of byte k = start of its token + (k - bytes before its token)
        positions = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)
        return bytes(self.buffer[positions].tobytes())

    def _first_text_token(self, ids: npt.NDArray[np.int64]) -> int | None:
        text_positions = np.flatnonzero(~self.special_mask[ids])
        return int(text_positions[0]) if text_positions.size else None


def token_byte_spans(tokenizer: Any, ids: Any, *, starts_text: bool = True) -> npt.NDArray[np.int64]:
    """Byte spans of each token of one sequence.

    Args:
        tokenizer: a Hugging Face fast tokenizer (or a ``tokenizers.Tokenizer``).
        ids: (T,) token ids.
        starts_text: the ids encode a text from its start, so a synthetic prefix space that the
            tokenizer prepended (SentencePiece dummy prefix) is not part of the text. Pass ``False``
            for a continuation, e.g. a completion generated after a prompt, and for a text that
            itself starts with a space (a Metaspace pre-tokenizer adds no prefix then, so from ids
            alone ``▁a`` may spell ``"a"`` or ``" a"``).

    Returns:
        (T, 2) int64 ``[start, end)`` into the UTF-8 bytes the ids spell; contiguous, specials
        zero-width.
    """
    table = token_bytes_table(tokenizer)
    lengths = table.sequence_lengths(np.asarray(ids, dtype=np.int64).reshape(-1), starts_text=starts_text)
    ends = np.cumsum(lengths)
    return np.stack([ends - lengths, ends], axis=1).astype(np.int64)


_TABLES: weakref.WeakKeyDictionary[Any, TokenBytesTable] = weakref.WeakKeyDictionary()


def token_bytes_table(tokenizer: Any) -> TokenBytesTable:
    """The cached ``id → bytes`` table of a tokenizer (built on first use, ~0.1–1 s)."""
    backend = _backend(tokenizer)
    table = _TABLES.get(backend)
    if table is None:
        table = build_token_bytes_table(tokenizer)
        _TABLES[backend] = table
    return table


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise TokenizerBytesError(
            f"{type(tokenizer).__name__} is not a fast (Rust-backed) tokenizer; gold needs one to read "
            "its vocabulary: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    return backend


def build_token_bytes_table(tokenizer: Any) -> TokenBytesTable:
    """Decode every piece of the vocabulary to its bytes (see the module docstring for the rules)."""
    backend = _backend(tokenizer)
    spec = json.loads(backend.to_str())
    kind = detect_kind(spec)
    vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
    specials = special_token_ids(backend)
    added = {tok.content for tok in backend.get_added_tokens_decoder().values()}
    size = max(vocab.values()) + 1
    pieces: list[bytes] = [b""] * size
    known = np.zeros(size, dtype=bool)
    for piece, token_id in vocab.items():
        known[token_id] = True
        if token_id in specials:
            continue
        pieces[token_id] = piece.encode("utf-8") if piece in added else _piece_bytes(piece, kind)
    special_mask = np.zeros(size, dtype=bool)
    special_mask[sorted(specials)] = True
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=size)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    buffer = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
    return TokenBytesTable(kind, buffer, offsets, special_mask, known, _prefix_space(spec, kind))


def detect_kind(spec: dict[str, Any]) -> TokenizerKind:
    """Piece format from a serialized ``tokenizers`` pipeline."""
    model_type = spec["model"]["type"]
    if model_type == "WordPiece":
        return "wordpiece"
    components = json.dumps([spec.get("decoder"), spec.get("pre_tokenizer")])
    if '"ByteLevel"' in components:
        return "byte_level"
    if _SPM_SPACE in components or '"Metaspace"' in components or '"ByteFallback"' in components:
        return "sentencepiece"
    raise TokenizerBytesError(
        f"cannot tell how a {model_type} tokenizer's pieces map to bytes (decoder {spec.get('decoder')}); "
        "gold supports byte-level BPE, SentencePiece-style (▁, <0xNN>) and WordPiece (##) vocabularies"
    )


def _prefix_space(spec: dict[str, Any], kind: TokenizerKind) -> bool:
    if kind == "wordpiece":
        return True
    if kind != "sentencepiece":
        return False
    pipeline = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    if '"Prepend"' in pipeline:
        return True
    return '"Metaspace"' in pipeline and '"prepend_scheme": "never"' not in pipeline


def _piece_bytes(piece: str, kind: TokenizerKind) -> bytes:
    if kind == "byte_level":
        try:
            return bytes(_BYTE_LEVEL[ch] for ch in piece)
        except KeyError as err:
            raise TokenizerBytesError(
                f"byte-level piece {piece!r} holds {err.args[0]!r}, which is not a byte character"
            ) from None
    if kind == "sentencepiece":
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace(_SPM_SPACE, " ").encode("utf-8")
    if piece.startswith("##"):
        return piece[2:].encode("utf-8")
    return b" " + piece.encode("utf-8")
