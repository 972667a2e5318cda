"""HF ``generate`` and the vLLM engine sample the same distribution, the model's own softmax, whatever the model's
generation config says (issue 29, item 1): both rollouts feed the same losses, so they must be one policy.

Runs in ``.venv-vllm`` (``make test``); elsewhere skipped.
"""

from __future__ import annotations

import os

import pytest
import torch

from gold.config import RolloutConfig
from gold.rollout import HFGenerator
from tests.gold.conftest import require_vllm
from tests.gold.rollout.test_hf import PROMPTS, A, B, peaked
from tests.gold.rollout.test_vllm import vllm_model

require_vllm()
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from gold.rollout.vllm import VLLMGenerator  # noqa: E402

PROMPT = PROMPTS[0]
DRAWS = 2000
# the sampling fields vLLM itself reads from a generation_config.json: each would change what is sampled
GENERATION_FIELDS = {"do_sample": True, "repetition_penalty": 1.3, "min_p": 0.5, "top_k": 1, "top_p": 0.1,
                     "temperature": 0.1}  # fmt: skip


def frequencies(ids: list[int], tokens: list[int]) -> torch.Tensor:
    """Counts of each of ``tokens`` and of everything else, in that order."""
    counts = [sum(i == t for i in ids) for t in tokens]
    return torch.tensor([*counts, len(ids) - sum(counts)], dtype=torch.float64)


def chi_square(first: torch.Tensor, second: torch.Tensor) -> float:
    """Pearson's two-sample χ² statistic of two count vectors over the same categories."""
    pooled = (first + second) / (first.sum() + second.sum())
    expected = [pooled * first.sum(), pooled * second.sum()]
    return float(sum(((obs - exp) ** 2 / exp).sum() for obs, exp in zip((first, second), expected, strict=True)))


def test_hf_and_vllm_sample_the_models_own_softmax(student_tokenizer) -> None:
    """2,000 one-token draws from each: each token's frequency is the model's probability within 4.5 σ, and the two
    samplers agree (two-sample χ² with 3 degrees of freedom below 16.3, p = 0.001), with a generation config that
    would make vLLM's and HF's defaults greedy-like (top_k 1, repetition_penalty 1.3, min_p 0.5)."""
    model = peaked(student_tokenizer, vllm_model(student_tokenizer), scales=(0.2, 0.19, 0.185))  # head size 32
    model.generation_config.update(**GENERATION_FIELDS)
    tokens = [A, B, student_tokenizer.eos_token_id]
    config = RolloutConfig(temperature=1.0, max_completion_length=1, num_generations=DRAWS, use_vllm=True)
    hf = HFGenerator(model, student_tokenizer, config)
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        probs = hf.processors(ids, model(ids).logits[:, -1].float()).softmax(-1)[0].double()
    expected = torch.tensor([*(float(probs[t]) for t in tokens), 1 - float(probs[tokens].sum())], dtype=torch.float64)
    assert expected.min() > 0.05, expected  # every category is likely: a leaked top_k 1 or min_p would empty some
    torch.manual_seed(0)
    hf_counts = frequencies([row[0] for row in hf.generate([PROMPT])], tokens)
    engine = VLLMGenerator(model, student_tokenizer, config)
    try:
        vllm_counts = frequencies([r.ids[0] for r in engine.rollout([PROMPT], seeds=[0])], tokens)
    finally:
        engine.close()
    sigma = (expected * (1 - expected) / DRAWS).sqrt()
    for name, counts in (("hf", hf_counts), ("vllm", vllm_counts)):
        assert counts.sum() == DRAWS
        assert ((counts / DRAWS - expected).abs() < 4.5 * sigma).all(), (name, counts / DRAWS, expected)
    statistic = chi_square(hf_counts, vllm_counts)
    print(f"\nexpected {expected.tolist()}\nhf {(hf_counts / DRAWS).tolist()}\nvllm {(vllm_counts / DRAWS).tolist()}"
          f"\ntwo-sample chi2 (3 dof) {statistic:.2f}")  # fmt: skip
    assert statistic < 16.3
