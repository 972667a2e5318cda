"""The one-vocabulary fast path equals the general aligner given the same ids on both sides."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alignment.identical as identical
from alignment import Alignment, align_identical, align_text_batch, encode_text, same_vocabulary, token_bytes_table
from gold.models.zoo import load_tokenizer
from tests.conftest import EXACT_ZOO, ZOO, texts, zoo

PLAIN_TEXTS = ["Hello, World!", "  two spaces and a tab\t", "東京は日本の首都です", "👩‍💻 3.14159", ""]


def assert_same_alignment(fast: Alignment, general: Alignment) -> None:
    for field in ("student_ids", "teacher_ids", "student_groups", "teacher_groups", "group_bytes", "approximate",
                  "student_spans", "teacher_spans"):  # fmt: skip
        np.testing.assert_array_equal(getattr(fast, field), getattr(general, field), err_msg=field)
    assert fast.text_bytes == general.text_bytes
    assert fast.stats == general.stats


def split_ids(tokenizer: object, text: str, cuts: list[int]) -> tuple[list[int], str]:
    """A non-canonical tokenization (each piece encoded alone, like a sampled one) and the text it spells."""
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    ids = [i for lo, hi in itertools.pairwise(points) for i in encode_text(tokenizer, text[lo:hi])]
    table = token_bytes_table(tokenizer)
    array = np.asarray(ids, dtype=np.int64)
    spelled = table.spell(array, table.sequence_lengths(array, starts_text=True))
    return ids, spelled.decode("utf-8", errors="replace")


@pytest.mark.parametrize("name", ZOO)
@settings(max_examples=25)
@given(text=texts, cuts=st.lists(st.integers(0, 40), max_size=6))
def test_fast_path_equals_the_aligner(name: str, text: str, cuts: list[int]) -> None:
    tokenizer = zoo(name)
    ids, spelled = split_ids(tokenizer, text, cuts)
    for candidate in (text, spelled):  # the text itself (maybe not what the ids spell) and what they spell
        try:
            general = align_text_batch(tokenizer, tokenizer, [candidate], student_ids=[ids], teacher_ids=[ids])[0]
        except ValueError as error:  # the aligner refuses ids of another text: so must the fast path
            with pytest.raises(type(error)):
                align_identical(tokenizer, [ids], [candidate])
            continue
        assert_same_alignment(align_identical(tokenizer, [ids], [candidate])[0], general)


@pytest.mark.parametrize("name", EXACT_ZOO)
def test_plain_text_takes_the_fast_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = zoo(name)
    ids = [encode_text(tokenizer, text) for text in PLAIN_TEXTS]
    expected = align_text_batch(tokenizer, tokenizer, PLAIN_TEXTS, student_ids=ids, teacher_ids=ids)

    def general_aligner(*args: object, **kwargs: object) -> None:
        raise AssertionError("the general aligner ran on text the ids spell exactly")

    monkeypatch.setattr(identical, "align_text_batch", general_aligner)
    fast = align_identical(tokenizer, ids, PLAIN_TEXTS)
    for one, other in zip(fast, expected, strict=True):
        assert_same_alignment(one, other)
        spells_bytes = one.student_spans[:, 1] > one.student_spans[:, 0]
        assert one.num_groups == int(spells_bytes.sum())  # 1:1: every token that spells bytes is a group


def test_same_vocabulary() -> None:
    qwen = zoo("qwen2.5")
    assert same_vocabulary(qwen, qwen)
    assert same_vocabulary(qwen, load_tokenizer("qwen2.5"))  # another object, the same vocabulary
    assert not same_vocabulary(qwen, zoo("llama-3"))
    grown = load_tokenizer("qwen2.5")
    grown.add_tokens(["<gold_extra>"])
    assert not same_vocabulary(qwen, grown)


def test_mismatched_lengths_are_named() -> None:
    with pytest.raises(ValueError, match="2 id sequences but 1 texts"):
        align_identical(zoo("qwen2.5"), [[1], [2]], ["a"])
