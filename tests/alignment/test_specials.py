"""Plain-text and continuation encodings."""

from __future__ import annotations

import pytest

from alignment import encode_continuation, encode_text, normalized, token_bytes_table
from tests.conftest import EXACT_ZOO, FRAGMENTS, zoo

TEXTS = ["It says moo.", " leading space", "  two spaces", "\nnewline first", "<s> and </s> are text", *FRAGMENTS]


@pytest.mark.parametrize("name", EXACT_ZOO)
def test_continuation_ids_spell_exactly_the_text(name) -> None:
    tokenizer = zoo(name)
    table = token_bytes_table(tokenizer)
    for text in TEXTS:
        ids = encode_continuation(tokenizer, text)
        stream = table.sequence_bytes(ids, starts_text=False)  # no synthetic prefix to remove
        assert stream in (text.encode(), normalized(tokenizer, text)), (name, text, stream)
        assert not table.special_mask[ids].any()  # special-token strings stay text


def test_continuation_differs_from_plain_text_only_by_the_dummy_prefix() -> None:
    mistral, smollm2 = zoo("mistral-v1"), zoo("smollm2")
    assert mistral.convert_ids_to_tokens(encode_text(mistral, "It says"))[0] == "▁It"
    assert mistral.convert_ids_to_tokens(encode_continuation(mistral, "It says"))[0] == "It"
    assert encode_continuation(mistral, " It says") == encode_text(mistral, " It says")
    for text in TEXTS:
        assert encode_continuation(smollm2, text) == encode_text(smollm2, text)
