"""Samples read as text: what evaluation, teacher-sample generation and the examples use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from gold.config import RolloutConfig
from gold.data.examples import prompt_ids, read_sample
from gold.rollout.hf import HFGenerator


@dataclass(frozen=True)
class SampledText:
    """A sample read as text: its exact bytes (a trailing unfinished character cut), whether it stopped, and on
    which stop id (None when it did not)."""

    text: str
    ended: bool
    stop_id: int | None = None


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    config: RolloutConfig,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[SampledText]:
    """Samples (``num_generations`` per prompt, in prompt order), each model rendering its own prompt.

    Texts are decoded from the exact bytes of the sampled tokens before the stop id
    (:func:`gold.data.examples.decode_completion`); ``ended`` is False for a sample the length limit cut. An empty
    text that ended means the model stopped at once.
    """
    generator = HFGenerator(model, tokenizer, config)
    samples: list[SampledText] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        batch = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        for row in generator.generate(batch):
            sample = read_sample(tokenizer, generator.stop, row)
            samples.append(SampledText(sample.decoded.text, ended=sample.ended, stop_id=sample.stop_id))
    return samples


def seeded_samples(
    model: Any, tokenizer: Any, prompts: Sequence[Any], *, samples_per_prompt: int, max_new_tokens: int, seed: int,
    batch_size: int = 16, progress: bool = False,
) -> list[SampledText]:  # fmt: skip
    """:func:`sample_completions` at temperature 1 (no top-p / top-k), seeded; the global RNG is left as it was.
    What every evaluation samples with (teacher samples, student samples, stop rates)."""
    config = RolloutConfig(temperature=1.0, top_p=1.0, top_k=0, max_completion_length=max_new_tokens,
                           num_generations=samples_per_prompt)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return sample_completions(model, tokenizer, prompts, config, batch_size=batch_size, progress=progress)


def sample_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    config: RolloutConfig,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """The texts of :func:`sample_completions`."""
    samples = sample_completions(model, tokenizer, prompts, config, batch_size=batch_size, progress=progress)
    return [s.text for s in samples]


def stop_rate(samples: Sequence[SampledText]) -> float:
    """Share of samples that ended with a stop id within the length limit."""
    if not samples:
        raise ValueError("stop_rate needs at least one sample")
    return sum(s.ended for s in samples) / len(samples)
