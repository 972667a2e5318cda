"""Alignment invariants on every zoo pair with random Unicode, and the behaviours around them."""

from __future__ import annotations

import itertools
import unicodedata

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from alignment import (
    Alignment,
    TokenizerBytesError,
    align_batch,
    align_ids,
    align_text_batch,
    align_texts,
    encode_text,
    text_stream,
    token_bytes_table,
)
from tests.conftest import EXACT_ZOO, texts, zoo
from tests.reference import reference_groups

PAIRS = list(itertools.combinations(EXACT_ZOO, 2))

# Text that normalizers rewrite: decomposed accents (NFC composes them), stacked marks of different
# combining classes (NFC also reorders them, so a proportional mapping can collapse token ends), a
# literal "▁" (SentencePiece reads it as a space), mixed with plain text.
REWRITTEN_TEXTS = [
    "cafe\u0301",
    "e\u0301\u0301 stacked",
    unicodedata.normalize("NFD", "Ångström"),
    "\uae00\u0369\u036f\u032a",  # 글 + above, above, below: NFC moves the mark below first
    "U\u036b\u0354\u0320u O\u03b2\u0311\u031e",
    "plain text, then cafe\u0301 au lait and n\u0303o\u0308 again",
]
# a base character followed by up to four marks in any order (canonical reordering at work)
marked_clusters = st.tuples(
    st.sampled_from("aeoAOUnc ωβ한글"),
    st.lists(st.sampled_from("\u0301\u0308\u0303\u0323\u0327\u0320\u0354\u0345\u031b\u036f"), max_size=4),
).map(lambda pair: pair[0] + "".join(pair[1]))
rewritten_texts = st.one_of(
    texts.map(lambda text: unicodedata.normalize("NFD", text)),
    st.lists(st.one_of(marked_clusters, texts), max_size=8).map("".join),
)


def check_invariants(alignment: Alignment) -> None:
    """Groups partition both sequences, are monotone, and cover the aligned bytes in order."""
    for groups, spans in (
        (alignment.student_groups, alignment.student_spans),
        (alignment.teacher_groups, alignment.teacher_spans),
    ):
        grouped = groups[groups >= 0]
        assert (np.diff(grouped) >= 0).all(), "groups must be monotone"
        assert (np.diff(grouped) <= 1).all(), "no group may be skipped"
        if alignment.num_groups:
            assert grouped[0] == 0 and grouped[-1] == alignment.num_groups - 1
        for g in range(alignment.num_groups):  # each group's tokens cover exactly its bytes
            positions = np.flatnonzero(groups == g)
            assert (np.diff(positions) == 1).all(), "a group's tokens must be contiguous"
            covered = spans[positions]
            assert covered[0, 0] <= alignment.group_bytes[g, 0] and covered[-1, 1] == alignment.group_bytes[g, 1]
    joined = b"".join(alignment.group_text(g) for g in range(alignment.num_groups))
    assert alignment.text_bytes.startswith(joined)
    assert (alignment.group_bytes[:, 1] > alignment.group_bytes[:, 0]).all()


def check_exact_groups_match_streams(alignment: Alignment, student, teacher) -> None:
    """For exact groups, each side's tokens spell the group's bytes."""
    s_table, t_table = token_bytes_table(student), token_bytes_table(teacher)
    for g in np.flatnonzero(~alignment.approximate).tolist():
        s_bytes = b"".join(s_table.token_bytes(int(i)) for i in alignment.student_ids[alignment.student_groups == g])
        t_bytes = b"".join(t_table.token_bytes(int(i)) for i in alignment.teacher_ids[alignment.teacher_groups == g])
        text = alignment.group_text(g)
        # a dummy-prefix space may lead the first group's tokens
        assert s_bytes in (text, b" " + text) and t_bytes in (text, b" " + text), (g, s_bytes, t_bytes, text)


@pytest.mark.parametrize(("student_name", "teacher_name"), PAIRS)
@settings(max_examples=15)
@given(text=texts)
@example(text="\u2581x a\u2581b")
def test_invariants_on_every_pair(student_name: str, teacher_name: str, text: str) -> None:
    student, teacher = zoo(student_name), zoo(teacher_name)
    missing = token_bytes_table(student).missing_bytes | token_bytes_table(teacher).missing_bytes
    assume(not missing & set(text.encode()))
    alignment = align_texts(student, teacher, text)
    check_invariants(alignment)
    # the text, unless both sides spell the same rewrite of it (two SentencePiece models reading "▁" as a space)
    student_stream = text_stream(student, alignment.student_ids, text.encode())
    teacher_stream = text_stream(teacher, alignment.teacher_ids, text.encode())
    aligned = student_stream if student_stream == teacher_stream else text.encode()
    assert alignment.text_bytes == aligned
    assert b"".join(alignment.group_text(g) for g in range(alignment.num_groups)) == aligned
    assert (alignment.stats.rewritten_bytes > 0) == (aligned != text.encode())
    check_exact_groups_match_streams(alignment, student, teacher)
    # only two rewrites are expected: Qwen's NFC, and SentencePiece reading a literal "▁" as a space
    nfc_rewrite = "qwen2.5" in (student_name, teacher_name) and not unicodedata.is_normalized("NFC", text)
    if not nfc_rewrite and "\u2581" not in text:
        assert not alignment.approximate.any()
    # the fast grouping equals the byte-level reference definition
    ref_s, ref_t, _ = reference_groups(
        [tuple(s) for s in alignment.student_spans.tolist()],
        token_bytes_table(student).special_mask[alignment.student_ids].tolist(),
        [tuple(t) for t in alignment.teacher_spans.tolist()],
        token_bytes_table(teacher).special_mask[alignment.teacher_ids].tolist(),
    )
    assert alignment.student_groups.tolist() == ref_s
    assert alignment.teacher_groups.tolist() == ref_t


@pytest.mark.parametrize("name", EXACT_ZOO)
@settings(max_examples=15)
@given(text=texts)
def test_identical_tokenizers_give_only_one_to_one_groups(name: str, text: str) -> None:
    tokenizer = zoo(name)
    assume(not token_bytes_table(tokenizer).missing_bytes & set(text.encode()))
    alignment = align_texts(tokenizer, tokenizer, text)
    text_tokens = ~token_bytes_table(tokenizer).special_mask[alignment.student_ids]
    widths = np.diff(alignment.student_spans, axis=1)[:, 0]
    assert np.array_equal(alignment.student_groups, alignment.teacher_groups)
    assert alignment.stats.num_groups == int((text_tokens & (widths > 0)).sum())
    assert set(alignment.stats.size_histogram) <= {"1:1", "2:2"}  # 2:2 only with a zero-width prefix piece
    assert not alignment.approximate.any()


@pytest.mark.parametrize(
    ("name", "text"),
    [("qwen2.5", text) for text in REWRITTEN_TEXTS]  # NFC
    + [("minilm", text) for text in ("cafe\u0301", "e\u0301\u0301 stacked", "Ångström and CAFÉ")]  # lower, no accents
    + [("gemma-3", text) for text in ("a\u2581b", "x \u2581\u2581y", "\u2581", "cafe\u0301\u2581ok")]  # ▁ → space
    # a leading ▁ is a space too, so no dummy prefix was added: the first piece keeps it
    + [("mistral-v1", text) for text in ("\u2581", "\u2581x a\u2581b", "\u2581\u2581x")],
)
def test_one_tokenizer_against_itself_is_exact_on_text_its_normalizer_rewrote(name: str, text: str) -> None:
    tokenizer = zoo(name)
    alignment = align_texts(tokenizer, tokenizer, text)
    check_invariants(alignment)
    check_exact_groups_match_streams(alignment, tokenizer, tokenizer)
    stream = text_stream(tokenizer, alignment.student_ids, text.encode())
    assert stream != text.encode(), "the text must really be rewritten for this test to mean anything"
    # aligned in the rewritten stream's coordinates: every byte covered, every group one token a side
    assert alignment.text_bytes == stream
    assert b"".join(alignment.group_text(g) for g in range(alignment.num_groups)) == stream
    assert alignment.stats.size_histogram == {"1:1": alignment.num_groups}
    assert not alignment.approximate.any() and alignment.stats.approximate_bytes == 0
    assert np.array_equal(alignment.student_groups, alignment.teacher_groups)
    assert alignment.stats.edited_bytes == 0 and alignment.stats.rewritten_bytes > 0


@pytest.mark.parametrize("name", ["qwen2.5", "gemma-3"])
@settings(max_examples=40)
@given(text=rewritten_texts)
def test_one_tokenizer_against_itself_is_exact_on_random_rewritten_unicode(name: str, text: str) -> None:
    tokenizer = zoo(name)
    assume(not token_bytes_table(tokenizer).missing_bytes & set(text.encode()))
    alignment = align_texts(tokenizer, tokenizer, text)
    check_invariants(alignment)
    check_exact_groups_match_streams(alignment, tokenizer, tokenizer)
    stream = text_stream(tokenizer, alignment.student_ids, text.encode())
    assert alignment.text_bytes == stream  # the text itself where nothing was rewritten
    assert b"".join(alignment.group_text(g) for g in range(alignment.num_groups)) == stream
    assert set(alignment.stats.size_histogram) <= {"1:1"}
    assert not alignment.approximate.any()
    assert (alignment.stats.rewritten_bytes > 0) == (stream != text.encode())


@pytest.mark.parametrize(("student_name", "teacher_name"), [("gemma-3", "mistral-v1"), ("mistral-v3", "gemma-3")])
@pytest.mark.parametrize("text", ["a\u2581b", "one\u2581two three\u2581\u2581four", "x\u2581", "\u2581x y"])
def test_two_tokenizers_with_the_same_rewrite_align_exactly(student_name: str, teacher_name: str, text: str) -> None:
    # no two zoo tokenizers share NFC; these SentencePiece models both read a literal "▁" as a space
    student, teacher = zoo(student_name), zoo(teacher_name)
    alignment = align_texts(student, teacher, text)
    check_invariants(alignment)
    check_exact_groups_match_streams(alignment, student, teacher)
    expected = text.replace("\u2581", " ").encode()
    assert text_stream(student, alignment.student_ids, text.encode()) == expected
    assert text_stream(teacher, alignment.teacher_ids, text.encode()) == expected
    assert alignment.text_bytes == expected
    assert b"".join(alignment.group_text(g) for g in range(alignment.num_groups)) == expected
    assert not alignment.approximate.any() and alignment.stats.rewritten_bytes > 0


def test_same_rewrite_is_exact_with_given_ids_in_a_batch(qwen) -> None:
    batch = ["cafe\u0301 noir", "plain", unicodedata.normalize("NFD", "Ångström")]
    ids = [encode_text(qwen, text) for text in batch]
    together = align_text_batch(qwen, qwen, batch, student_ids=ids, teacher_ids=ids)
    for text, alignment in zip(batch, together, strict=True):
        alone = align_texts(qwen, qwen, text)
        assert alignment.text_bytes == alone.text_bytes == unicodedata.normalize("NFC", text).encode()
        assert np.array_equal(alignment.group_bytes, alone.group_bytes) and alignment.stats == alone.stats
        assert alignment.stats.size_histogram == {"1:1": alignment.num_groups}
        assert not alignment.approximate.any()
    assert [a.stats.rewritten_bytes > 0 for a in together] == [True, False, True]


def test_same_rewrite_of_other_text_still_raises(qwen) -> None:
    ids = encode_text(qwen, "completely different")
    with pytest.raises(TokenizerBytesError, match="the student tokenizer's bytes do not reproduce the text"):
        align_text_batch(qwen, qwen, ["XYZ 123 !!"], student_ids=[ids], teacher_ids=[ids])


def test_batch_equals_per_example(qwen, llama) -> None:
    batch = ["Hello world", "", "12345 + 678", "日本語 👍🏽", "naïve"]
    together = align_text_batch(qwen, llama, batch)
    for text, alignment in zip(batch, together, strict=True):
        alone = align_texts(qwen, llama, text)
        assert np.array_equal(alone.student_groups, alignment.student_groups)
        assert np.array_equal(alone.teacher_groups, alignment.teacher_groups)
        assert np.array_equal(alone.group_bytes, alignment.group_bytes)
        assert alone.stats == alignment.stats
    ids_s = [encode_text(qwen, t) for t in batch]
    ids_t = [encode_text(llama, t) for t in batch]
    for alignment, s, t in zip(align_batch(qwen, ids_s, llama, ids_t), ids_s, ids_t, strict=True):
        alone = align_ids(qwen, s, llama, t)
        assert np.array_equal(alone.student_groups, alignment.student_groups)
        assert np.array_equal(alone.teacher_groups, alignment.teacher_groups)


def test_truncated_side_is_exact_up_to_the_last_shared_boundary(qwen, llama) -> None:
    text = "The answer is 12345."
    student = encode_text(qwen, text)[:-2]  # "...1234": cut inside llama's "45"
    alignment = align_ids(qwen, student, llama, encode_text(llama, text))
    assert alignment.student_groups.tolist()[-1] == -1
    assert alignment.teacher_groups.tolist()[-2:] == [-1, -1]
    assert not alignment.approximate.any()
    assert alignment.group_text(alignment.num_groups - 1) == b"123"
    check_invariants(alignment)


def test_specials_stay_outside_groups(qwen, llama) -> None:
    student = [qwen.convert_tokens_to_ids("<|im_start|>"), *encode_text(qwen, "hi there"), qwen.eos_token_id]
    teacher = [llama.bos_token_id, *encode_text(llama, "hi there")]
    alignment = align_ids(qwen, student, llama, teacher)
    assert alignment.student_groups[0] == -1 and alignment.student_groups[-1] == -1
    assert alignment.teacher_groups[0] == -1
    assert alignment.stats.student_special == 2 and alignment.stats.teacher_special == 1
    check_invariants(alignment)


def test_nfc_normalizer_gives_approximate_groups_and_counts_bytes(qwen, llama) -> None:
    text = unicodedata.normalize("NFD", "café au lait")
    alignment = align_texts(qwen, llama, text)
    check_invariants(alignment)
    assert alignment.approximate.any() and not alignment.approximate.all()
    assert alignment.stats.approximate_bytes > 0 and alignment.stats.edited_bytes > 0
    assert alignment.group_text(int(np.flatnonzero(alignment.approximate)[0])).endswith("e\u0301".encode())


def test_wordpiece_lowercasing_is_aligned_approximately(llama) -> None:
    alignment = align_texts(zoo("minilm"), llama, "Hello World, hello world")
    check_invariants(alignment)
    assert alignment.approximate[:2].all() and not alignment.approximate[-2:].any()


def test_different_completion_bytes_raise_with_position(qwen, llama) -> None:
    with pytest.raises(TokenizerBytesError, match="first difference at byte 0"):
        align_ids(qwen, encode_text(qwen, "completely different"), llama, encode_text(llama, "XYZ 123 !!"))


def test_tokenizer_that_cannot_reproduce_its_text_raises(qwen) -> None:
    class Shifted:  # a tokenizer whose vocabulary bytes are not what it claims: every id off by one
        backend_tokenizer = qwen.backend_tokenizer

        def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
            return {"input_ids": [i + 1 for i in qwen(text, **kwargs)["input_ids"]]}

    with pytest.raises(TokenizerBytesError, match="do not reproduce the text"):
        align_texts(Shifted(), qwen, "a perfectly ordinary sentence about apples")


def test_empty_text_gives_no_groups(qwen, llama) -> None:
    alignment = align_texts(qwen, llama, "")
    assert alignment.num_groups == 0 and alignment.stats.one_to_one_fraction == 0.0
