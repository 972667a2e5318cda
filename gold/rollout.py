"""Completions sampled from a model (the student on-policy, the teacher for ``seq_kd``).

:class:`Generator` is the seam: anything with ``generate(prompts) -> completions`` plugs in (a vLLM
engine later). :class:`HFGenerator` uses ``transformers`` ``generate``. Both rules of DESIGN §3 hold for
every sampler:

* it stops at **every** stop id (:class:`gold.stops.StopRule`: the generation config's list, the
  tokenizer's EOS, the chat template's end token) and returns the ids up to and including the first;
* it never samples an id that is not text or a stop id: embedding rows without a token (padding rows of a
  rounded-up vocabulary, holes in the id space) and non-stop special tokens (``<|endoftext|>`` in a Qwen
  rollout, chat markers) get ``-inf`` logits before sampling. Such a token spells no bytes, so the other
  model would never see it while the sampler's own context held it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from alignment import token_bytes_table
from gold.config import RolloutConfig
from gold.data import logit_rows, pad_id, prompt_ids, read_sample
from gold.stops import StopRule, model_stop_rule


class Generator(Protocol):
    """Samples completions: ``num_generations`` per prompt, in prompt order, each cut after its first stop
    id (kept as the last id; a completion without one was cut by the length limit)."""

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]: ...


class MaskUnspellable(LogitsProcessor):
    """Sets the logits of ids that must not be sampled to ``-inf``.

    Args:
        allowed: (V,) bool, True for ids that may be sampled (:func:`spellable_ids`: text tokens and stop ids).
    """

    def __init__(self, allowed: torch.Tensor) -> None:
        self.blocked = ~allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        blocked = self.blocked.to(scores.device)
        width = min(scores.shape[-1], blocked.shape[0])
        scores[..., :width] = scores[..., :width].masked_fill(blocked[:width], float("-inf"))
        if scores.shape[-1] > width:  # rows beyond the tokenizer: never a token
            scores[..., width:] = float("-inf")
        return scores


def spellable_ids(tokenizer: Any, num_rows: int, stop_ids: Sequence[int] = ()) -> torch.Tensor:
    """(num_rows,) bool: embedding rows that may be sampled: text tokens of ``tokenizer`` and its stop ids."""
    table = token_bytes_table(tokenizer)
    allowed = np.zeros(num_rows, dtype=bool)
    size = min(num_rows, table.vocab_size)
    allowed[:size] = table.known_mask[:size] & ~table.special_mask[:size]
    stops = np.asarray([i for i in stop_ids if i < num_rows], dtype=np.int64)
    allowed[stops] = True
    return torch.from_numpy(allowed)


class HFGenerator:
    """Sampling with ``model.generate``; prompts left-padded, completions cut after their first stop id.

    Args:
        model: a causal LM (its embedding rows may exceed the tokenizer).
        tokenizer: its tokenizer.
        config: temperature (0: greedy), top-p, top-k, ``num_generations``, ``max_completion_length``.
        stop: stop ids and end token (default: from the model's generation config and the tokenizer).
    """

    def __init__(self, model: Any, tokenizer: Any, config: RolloutConfig, stop: StopRule | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.stop = stop or model_stop_rule(model, tokenizer)
        allowed = spellable_ids(tokenizer, logit_rows(model), sorted(self.stop.stop_ids))
        self.processors = LogitsProcessorList([MaskUnspellable(allowed)])
        self.pad_id = pad_id(tokenizer)

    def _sampling(self) -> dict[str, Any]:
        config = self.config
        if config.temperature == 0:
            return {"do_sample": False}
        # top_k=0 switches top-k off (None would fall back to the model's generation_config)
        return {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        repeated = [list(p) for p in prompts for _ in range(self.config.num_generations)]
        width = max(len(p) for p in repeated)
        device = next(self.model.parameters()).device
        ids = torch.full((len(repeated), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for b, prompt in enumerate(repeated):
            ids[b, width - len(prompt) :] = torch.tensor(prompt)
            mask[b, width - len(prompt) :] = 1
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=self.config.max_completion_length,
                logits_processor=self.processors,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.stop.stop_ids) or None,
                **self._sampling(),
            )
        finally:
            self.model.train(was_training)
        return [self._cut(row) for row in out[:, width:].tolist()]

    def _cut(self, row: list[int]) -> list[int]:
        body, stop = self.stop.split(row)
        return body if stop is None else [*body, stop]


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
    (:func:`gold.data.decode_completion`); ``ended`` is False for a sample the length limit cut. An empty
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
