"""Byte spans from ids: the id→bytes table against the published piece definitions, and spans
against the text and against the tokenizer's own character offsets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given, settings

from alignment import TokenizerBytesError, encode_text, token_byte_spans, token_bytes_table
from tests.conftest import EXACT_ZOO, ZOO, texts, zoo
from tests.reference import reference_piece_bytes, reference_spans


@pytest.mark.parametrize("name", ZOO)
def test_table_matches_reference_piece_decoding(name: str) -> None:
    tokenizer = zoo(name)
    table = token_bytes_table(tokenizer)
    backend = tokenizer.backend_tokenizer
    added = {tok.content for tok in backend.get_added_tokens_decoder().values()}
    checked = 0
    for piece, token_id in backend.get_vocab(with_added_tokens=True).items():
        if table.special_mask[token_id]:
            assert table.token_bytes(token_id) == b""
            continue
        expected = piece.encode() if piece in added else reference_piece_bytes(piece, table.kind)
        assert table.token_bytes(token_id) == expected, (name, token_id, piece)
        checked += 1
    assert checked > 0.9 * len(tokenizer) - table.special_mask.sum()


@pytest.mark.parametrize("name", EXACT_ZOO)
@settings(max_examples=40)
@given(text=texts)
@example(text="\u2581")
@example(text="a \u2581b\u2581")
def test_spans_reproduce_text_and_agree_with_offsets(name: str, text: str) -> None:
    tokenizer = zoo(name)
    table = token_bytes_table(tokenizer)
    # SmolLM2's vocabulary lacks some single bytes (0x04, 0xF1, …): its tokenizer drops them
    assume(not table.missing_bytes & set(text.encode()))
    if table.kind == "sentencepiece" and "\u2581" in text:
        # SentencePiece writes a space as "▁", so a literal "▁" in the text is read as a space: the ids
        # are those of the spaced text (the aligner flags such groups approximate, see test_align)
        spaced = text.replace("\u2581", " ")
        assert tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(spaced, add_special_tokens=False)
        text = spaced
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    starts_text = not text.startswith(" ")  # see token_byte_spans: no dummy prefix then
    spans = token_byte_spans(tokenizer, ids, starts_text=starts_text)
    stream = table.sequence_bytes(np.asarray(ids), starts_text=starts_text)
    if name == "qwen2.5":  # NFC may rewrite the text; the stream is then the normalized text
        import unicodedata

        assert stream == unicodedata.normalize("NFC", text).encode()
        return
    assert stream == text.encode()
    assert spans.shape == (len(ids), 2)
    pieces = [stream[s:e] for s, e in spans.tolist()]
    assert [tuple(span) for span in spans.tolist()] == reference_spans(pieces)
    # the Rust tokenizer's character offsets, in bytes, must contain each of our byte spans
    char_to_byte = np.concatenate([[0], np.cumsum([len(c.encode()) for c in text])])
    for (start, end), (c0, c1) in zip(spans.tolist(), encoded["offset_mapping"], strict=True):
        if end > start:
            assert char_to_byte[c0] <= start and end <= char_to_byte[c1], (text, ids)


def test_missing_single_bytes_are_reported() -> None:
    assert 0xF1 in token_bytes_table(zoo("smollm2")).missing_bytes
    assert not token_bytes_table(zoo("llama-3")).missing_bytes


def test_special_tokens_are_zero_width(qwen) -> None:
    ids = [qwen.convert_tokens_to_ids("<|im_start|>"), *encode_text(qwen, "hi"), qwen.eos_token_id]
    spans = token_byte_spans(qwen, ids)
    assert spans.tolist() == [[0, 0], [0, 2], [2, 2]]


def test_special_token_text_inside_a_completion_stays_text(qwen) -> None:
    ids = encode_text(qwen, "bye<|im_end|>")
    assert qwen.convert_tokens_to_ids("<|im_end|>") not in ids
    assert token_bytes_table(qwen).sequence_bytes(np.asarray(ids), starts_text=True) == b"bye<|im_end|>"


def test_sentencepiece_dummy_prefix_is_not_text() -> None:
    tokenizer = zoo("mistral-v1")
    ids = encode_text(tokenizer, "Hello world")
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "▁Hello"
    assert token_byte_spans(tokenizer, ids).tolist()[0] == [0, 5]
    # a continuation keeps the space: "▁Hello" after a prompt means " Hello"
    assert token_byte_spans(tokenizer, ids, starts_text=False).tolist()[0] == [0, 6]


def test_byte_level_tokens_split_a_character_into_bytes(llama) -> None:
    ids = encode_text(llama, "🤗")
    spans = token_byte_spans(llama, ids)
    assert len(ids) > 1 and spans[-1, 1] == 4 and (np.diff(spans, axis=1) > 0).all()


def test_id_without_a_token_raises_with_the_id(qwen) -> None:
    with pytest.raises(TokenizerBytesError, match="151900"):
        token_byte_spans(qwen, [100, 151900])


def test_slow_tokenizer_is_refused() -> None:
    class Slow:
        pass

    with pytest.raises(TokenizerBytesError, match="not a fast"):
        token_bytes_table(Slow())
