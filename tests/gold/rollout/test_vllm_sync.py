"""When the vLLM engine gets the student's weights (``vllm_sync_frequency``), without vLLM: an engine that only
records which step's weights it holds, asked the way :meth:`gold.training.steps.StepBatches.step_rollouts` asks."""

from __future__ import annotations

import random

import pytest

from gold.config import RolloutConfig
from gold.rollout.vllm import VLLMGenerator
from tests.gold.conftest import tiny


class StepEngine:
    """Holds the optimizer step of the weights it was last given."""

    def __init__(self, step: int | None) -> None:
        self.step = step
        self.pushes: list[int] = []

    def load_weights(self, state) -> None:
        self.step = state()["step"]
        self.pushes.append(self.step)

    def sample(self, prompts, seeds, args):
        raise AssertionError("the schedule never samples")

    def close(self) -> None:
        pass


def ages(generator: VLLMGenerator, engine: StepEngine, on_policy: list[bool]) -> list[int]:
    """How old the engine's weights are at each on-policy step (steps.py: push when due, then sample)."""
    out = []
    for step, sampled in enumerate(on_policy):
        if not sampled:  # an optimizer step with no on-policy slice never asks
            continue
        if generator.needs_sync(step):
            generator.sync(lambda step=step: {"step": step}, step)
        assert engine.step is not None
        out.append(step - engine.step)
    return out


@pytest.mark.parametrize("frequency", [1, 2, 4, 8])
@pytest.mark.parametrize("lmbda", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("held", [None, 0], ids=["server", "colocated"])  # the step whose weights it starts with
def test_on_policy_steps_sample_weights_at_most_frequency_minus_one_steps_old(student_tokenizer, frequency, lmbda,
                                                                              held) -> None:  # fmt: skip
    """Over 300 steps whose on-policy slices are drawn at random (4 slices a step, each on-policy with probability
    lmbda), every on-policy step samples weights at most frequency − 1 steps old; an engine whose weights are unknown
    gets them at the first on-policy step. ``step % frequency == 0``, asked only at on-policy steps, let λ 0.5 and
    frequency 4 sample from weights up to 51 steps old."""
    model, config = tiny(student_tokenizer), RolloutConfig(use_vllm=True, vllm_sync_frequency=frequency)
    rng = random.Random(frequency * 100 + int(lmbda * 10))
    for _ in range(5):
        on_policy = [any(rng.random() < lmbda for _ in range(4)) for _ in range(300)]
        engine = StepEngine(held)
        generator = VLLMGenerator(model, student_tokenizer, config, engine=engine, step=held)
        seen = ages(generator, engine, on_policy)
        assert max(seen) <= frequency - 1, (max(seen), frequency)
        if held is None:
            assert engine.pushes[0] == on_policy.index(True)
