"""Rollouts never sample an id without a token; completions are cut at EOS."""

from __future__ import annotations

import torch

from gold.config import RolloutConfig
from gold.rollout import HFGenerator, MaskUnspellable, spellable_ids
from tests.gold.conftest import tiny


def test_mask_blocks_rows_beyond_and_holes() -> None:
    allowed = torch.tensor([True, False, True])
    scores = torch.zeros(2, 5)
    out = MaskUnspellable(allowed)(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.isinf(out[:, [1, 3, 4]]).all() and (out[:, [0, 2]] == 0).all()


def test_generation_never_samples_padding_rows(student_tokenizer) -> None:
    model = tiny(student_tokenizer)
    vocab = len(student_tokenizer)
    model.resize_token_embeddings(vocab + 64)  # rows without a token, as in rounded-up vocabularies
    with torch.no_grad():  # make those rows the most likely by far
        model.get_output_embeddings().weight[vocab:] = 50 * model.model.layers[0].input_layernorm.weight.sign()
    assert not spellable_ids(student_tokenizer, vocab + 64)[vocab:].any()
    config = RolloutConfig(temperature=1.0, max_completion_length=8, num_generations=3)
    prompts = [[student_tokenizer.bos_token_id or 0, 42, 43], [44]]
    completions = HFGenerator(model, student_tokenizer, config).generate(prompts)
    assert len(completions) == 6
    assert all(0 <= i < vocab for row in completions for i in row)
    assert all(student_tokenizer.eos_token_id not in row for row in completions)


def test_greedy_is_deterministic(student_tokenizer) -> None:
    model = tiny(student_tokenizer).train()
    generator = HFGenerator(model, student_tokenizer, RolloutConfig(temperature=0.0, max_completion_length=5))
    assert generator.generate([[1, 2, 3]]) == generator.generate([[1, 2, 3]])
    assert model.training  # generation restores the mode it found
