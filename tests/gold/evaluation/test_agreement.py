"""Group-level agreement against per-example references and the sequence-level KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment import align_texts, encode_continuation, token_bytes_table
from gold.data.examples import Example, prompt_ids
from gold.evaluation.agreement import AgreementCache, group_agreement
from gold.evaluation.bits_per_byte import distillation_gap
from tests.gold.conftest import tiny

EXAMPLES = [
    Example("What does a cow say?\n", "It says moo. Café ☕ 東京!"),
    Example("Say hi\n", "Hi there 👋🏽, how are you?"),
    Example("Count\n", " 1, 2, 3 and    four."),
]


def _next_byte_reference(model, tokenizer, example: Example, starts: list[int]) -> np.ndarray:
    """(groups, 258) next-byte probabilities at each group's first token, by bincount over token first bytes."""
    p_ids, c_ids = prompt_ids(tokenizer, example.prompt), encode_continuation(tokenizer, example.completion)
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + c_ids])).logits[0].double()
    probs = torch.softmax(logits, dim=-1).numpy()
    first = _bins(tokenizer, model)
    rows = [probs[len(p_ids) - 1 + start] for start in starts]
    return np.stack([np.bincount(first, weights=row, minlength=258) for row in rows])


_FIRST_BYTES: dict[int, np.ndarray] = {}


def _first_bytes(tokenizer) -> np.ndarray:
    """First byte of every token (256: the end token, the completion stops; 257: none), one token at a time."""
    if id(tokenizer) not in _FIRST_BYTES:
        table = token_bytes_table(tokenizer)
        first = np.full(table.vocab_size, 257)
        for token in np.flatnonzero(table.known_mask):
            spelled = table.token_bytes(int(token))
            first[token] = spelled[0] if spelled else 257
        first[tokenizer.eos_token_id] = 256
        _FIRST_BYTES[id(tokenizer)] = first
    return _FIRST_BYTES[id(tokenizer)]


def _bins(tokenizer, model) -> np.ndarray:
    """First byte of every logit row of ``model`` (257 for specials and rows beyond the tokenizer)."""
    rows = model.get_output_embeddings().weight.shape[0]
    first = np.full(rows, 257)
    known = _first_bytes(tokenizer)[:rows]
    first[: len(known)] = known
    return first


def _group_starts(groups: list[int]) -> list[int]:
    return [k for k, g in enumerate(groups) if k == 0 or g != groups[k - 1]]


def test_group_kl_equals_the_sequence_kl_and_next_bytes_match_a_reference(student_tokenizer, teacher_tokenizer):
    student, teacher = tiny(student_tokenizer, seed=1).eval(), tiny(teacher_tokenizer, seed=2).eval()
    result = group_agreement(student, student_tokenizer, teacher, teacher_tokenizer, EXAMPLES, batch_size=2)
    gap = distillation_gap(student, student_tokenizer, teacher, teacher_tokenizer, EXAMPLES)
    assert result.kl_bits_per_byte == pytest.approx(gap.kl_bits_per_byte, rel=1e-5)
    assert result.student_bits_per_byte == pytest.approx(gap.student_bits_per_byte, rel=1e-6)
    assert result.teacher_bits_per_byte == pytest.approx(gap.teacher_bits_per_byte, rel=1e-6)
    assert result.num_bytes == gap.num_bytes
    agree, kls, groups = [], [], 0
    for example in EXAMPLES:
        alignment = align_texts(student_tokenizer, teacher_tokenizer, example.completion)
        # every completion ended: the end group starts after the last token, predicting the end token
        s_starts = [*_group_starts(list(alignment.student_groups)), len(alignment.student_ids)]
        t_starts = [*_group_starts(list(alignment.teacher_groups)), len(alignment.teacher_ids)]
        s_bytes = _next_byte_reference(student, student_tokenizer, example, s_starts)
        t_bytes = _next_byte_reference(teacher, teacher_tokenizer, example, t_starts)
        # compare on the bins (first bytes, or none) both sides' logit rows can produce, renormalized
        shared = np.isin(np.arange(258), _bins(student_tokenizer, student)) & np.isin(
            np.arange(258), _bins(teacher_tokenizer, teacher)
        )
        s_bytes, t_bytes = s_bytes[:, shared], t_bytes[:, shared]
        s_bytes /= s_bytes.sum(1, keepdims=True)
        t_bytes /= t_bytes.sum(1, keepdims=True)
        agree += list(s_bytes.argmax(1) == t_bytes.argmax(1))
        kls += [float(np.sum(t * (np.log(t) - np.log(s)))) for s, t in zip(s_bytes, t_bytes, strict=True)]
        groups += len(s_starts)
    assert result.num_groups == groups
    assert result.next_byte_agreement == pytest.approx(np.mean(agree))
    assert result.next_byte_kl_bits == pytest.approx(np.mean(kls) / np.log(2), rel=1e-4)


def test_cache_reuses_tables_and_teacher_forwards(student_tokenizer, teacher_tokenizer) -> None:
    teacher = tiny(teacher_tokenizer, seed=2).eval()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    first, second = tiny(student_tokenizer, seed=1), tiny(student_tokenizer, seed=7)
    cache = AgreementCache()
    group_agreement(first, student_tokenizer, teacher, teacher_tokenizer, EXAMPLES, batch_size=2, cache=cache)
    forwards = len(calls)
    cached = group_agreement(second, student_tokenizer, teacher, teacher_tokenizer, EXAMPLES, batch_size=2,
                             cache=cache)  # fmt: skip
    assert forwards == 2 and len(calls) == forwards  # two batches, and none again for the second student
    assert len(cache.tables) == 1
    fresh = group_agreement(second, student_tokenizer, teacher, teacher_tokenizer, EXAMPLES, batch_size=2)
    assert cached == fresh


def test_a_model_agrees_with_itself(student_tokenizer) -> None:
    model = tiny(student_tokenizer, seed=5)
    result = group_agreement(model, student_tokenizer, model, student_tokenizer, EXAMPLES)
    assert result.kl_bits_per_byte == pytest.approx(0.0, abs=1e-9)
    assert result.mean_abs_group_gap_bits == pytest.approx(0.0, abs=1e-9)
    assert result.next_byte_agreement == 1.0
    assert result.next_byte_kl_bits == pytest.approx(0.0, abs=1e-6)


def test_agreement_refuses_empty_input(student_tokenizer) -> None:
    model = tiny(student_tokenizer)
    with pytest.raises(ValueError, match="at least one example"):
        group_agreement(model, student_tokenizer, model, student_tokenizer, [])
