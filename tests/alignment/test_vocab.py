"""Vocabulary map on canonical bytes versus raw piece strings."""

from __future__ import annotations

import numpy as np
import pytest

from alignment import VocabMap, encode_text, raw_string_overlap, token_bytes_table
from tests.conftest import zoo


def test_matched_pairs_spell_the_same_bytes(qwen, llama) -> None:
    vocab = VocabMap.build(qwen, llama)
    s_table, t_table = token_bytes_table(qwen), token_bytes_table(llama)
    sample = np.random.default_rng(0).choice(vocab.num_matched, 500, replace=False)
    for k in sample.tolist():
        assert s_table.token_bytes(int(vocab.student_ids[k])) == t_table.token_bytes(int(vocab.teacher_ids[k]))
    lookup = vocab.student_to_teacher()
    assert lookup[vocab.student_ids[0]] == vocab.teacher_ids[0]


def test_identical_tokenizers_match_every_text_token(qwen) -> None:
    vocab = VocabMap.build(qwen, qwen)
    assert vocab.matched_fraction == 1.0 and np.array_equal(vocab.student_ids, vocab.teacher_ids)


def test_canonical_bytes_match_more_than_raw_strings_across_families() -> None:
    gemma, smollm = zoo("gemma-3"), zoo("smollm2")
    canonical = VocabMap.build(smollm, gemma).num_text_matched
    raw = raw_string_overlap(smollm, gemma)
    # "▁world" and "Ġworld" never match as strings; as bytes they are both b" world"
    assert canonical > 2 * raw, (canonical, raw)


def test_raw_matching_pairs_identical_piece_strings_only() -> None:
    """TRL 1.16's matching (``vocab_match: raw``): every pair is the same get_vocab() string on both sides, and the
    pair count is the raw overlap; ``Ġworld`` (SmolLM2) is not paired with ``▁world`` (Gemma-3)."""
    gemma, smollm = zoo("gemma-3"), zoo("smollm2")
    raw = VocabMap.build_raw(smollm, gemma)
    student_pieces = {i: p for p, i in smollm.get_vocab().items()}
    teacher_pieces = {i: p for p, i in gemma.get_vocab().items()}
    assert all(
        student_pieces[int(s)] == teacher_pieces[int(t)] for s, t in zip(raw.student_ids, raw.teacher_ids, strict=True)
    )
    assert raw.num_text_matched == raw_string_overlap(smollm, gemma) < VocabMap.build(smollm, gemma).num_text_matched
    world = smollm.convert_tokens_to_ids("Ġworld")
    assert world not in set(raw.student_ids.tolist()) and world in set(
        VocabMap.build(smollm, gemma).student_ids.tolist()
    )


def test_byte_level_pairs_match_on_bytes_at_least_as_well_as_raw(qwen, llama) -> None:
    assert VocabMap.build(qwen, llama).num_text_matched >= raw_string_overlap(qwen, llama) - 300


def test_near_matches_are_scored_and_unmatched(qwen, llama) -> None:
    vocab = VocabMap.build(qwen, llama)
    found = vocab.near_matches(limit=30, score_cutoff=60)
    matched = set(vocab.student_ids.tolist())
    assert found, "some unmatched Qwen tokens have a similar Llama token"
    assert all(60 <= m.score <= 100 and m.student_id not in matched for m in found)


@pytest.mark.parametrize("name", ["mistral-v1", "gemma-3"])
def test_every_token_a_tokenizer_emits_is_matched_with_itself(name) -> None:
    """SentencePiece spells some bytes twice (byte fallback ``<0x65>`` and the piece ``e``): the match
    must go to the piece the tokenizer emits, or common tokens fall out of the matched vocabulary."""
    tokenizer = zoo(name)
    vocab = VocabMap.build(tokenizer, tokenizer)
    matched = set(vocab.student_ids.tolist())
    ids = encode_text(tokenizer, "It says moo. e, o, s! 東京 1234 (x)")
    assert all(i in matched for i in ids), [tokenizer.convert_ids_to_tokens(i) for i in ids if i not in matched]
    assert np.array_equal(vocab.student_ids, vocab.teacher_ids)
