"""Tokenizer-independent evaluation against explicit per-sequence computations."""

from __future__ import annotations

import math

import pytest
import torch

from alignment import encode_continuation
from gold.data.examples import Example, prompt_ids
from gold.evaluation.bits_per_byte import completion_logprobs, distillation_gap
from tests.gold.conftest import tiny


def test_completion_logprobs_match_one_sequence_at_a_time(student_tokenizer) -> None:
    model = tiny(student_tokenizer, seed=3).eval()
    prompts, completions = ["Q?\n", "A much longer prompt?\n"], ["It says moo.", "Café ☕"]
    batched = completion_logprobs(model, student_tokenizer, prompts, completions, batch_size=2)
    for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        p_ids, c_ids = prompt_ids(student_tokenizer, prompt), encode_continuation(student_tokenizer, completion)
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + c_ids])).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        expected = sum(float(logprobs[len(p_ids) - 1 + k, t]) for k, t in enumerate(c_ids))
        assert float(batched[index]) == pytest.approx(expected, abs=1e-4)


def test_gap_is_zero_for_the_teacher_itself(student_tokenizer) -> None:
    model = tiny(student_tokenizer, seed=4)
    examples = [Example("Q?\n", "It says moo."), Example("Hi\n", "Baa!")]
    gap = distillation_gap(model, student_tokenizer, model, student_tokenizer, examples)
    assert gap.kl_bits_per_byte == pytest.approx(0.0, abs=1e-9)
    assert gap.num_bytes == len("It says moo.Baa!")
    assert gap.student_bits_per_byte == pytest.approx(gap.teacher_bits_per_byte)


def test_gap_across_tokenizers_is_a_difference_of_bits_per_byte(student_tokenizer, teacher_tokenizer) -> None:
    examples = [Example("Q?\n", "It says moo. 東京")]
    gap = distillation_gap(tiny(student_tokenizer), student_tokenizer, tiny(teacher_tokenizer), teacher_tokenizer,
                           examples)  # fmt: skip
    assert gap.kl_bits_per_byte == pytest.approx(gap.student_bits_per_byte - gap.teacher_bits_per_byte)
    assert math.isfinite(gap.kl_bits_per_byte) and gap.student_bits_per_byte > 0


def test_gap_needs_bytes(student_tokenizer) -> None:
    model = tiny(student_tokenizer)
    with pytest.raises(ValueError, match="non-empty completions"):
        distillation_gap(model, student_tokenizer, model, student_tokenizer, [Example("Q", "")])
