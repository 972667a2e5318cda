"""Rollouts with ``transformers`` ``generate`` (the default engine; :mod:`gold.rollout.vllm` is the other)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from gold.config import RolloutConfig
from gold.data.examples import logit_rows, pad_id
from gold.models.sharding import is_sharded
from gold.models.stops import StopRule, model_stop_rule
from gold.rollout.base import Rollout, spellable_ids

logger = logging.getLogger(__name__)

# fields gold sets itself or that do not change what is sampled: not worth a log line when a model sets them
_UNLOGGED = {"eos_token_id", "pad_token_id", "bos_token_id", "do_sample", "temperature", "top_p", "top_k",
             "max_new_tokens", "max_length", "transformers_version", "use_cache", "output_attentions",
             "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate"}  # fmt: skip


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


def rollout_generation_config(config: RolloutConfig, *, stop_ids: Sequence[int], pad_token_id: int) -> GenerationConfig:
    """The generation config of gold's rollouts, built from gold's settings only: stop ids, pad id, length limit and
    temperature / top-p / top-k (temperature 0: greedy). Every other field stays at its neutral default, so the
    samples follow the model's own softmax (what on-policy GKD and OPD-RL's estimator assume, and what vLLM's explicit
    ``SamplingParams`` draw) whatever the model's ``generation_config.json`` sets (repetition_penalty, min_p,
    no_repeat_ngram_size, suppress_tokens, num_beams, ...)."""
    if config.temperature == 0:
        sampling: dict[str, Any] = {"do_sample": False}
    else:  # top_k=0 switches top-k off
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
    return GenerationConfig(max_new_tokens=config.max_completion_length, eos_token_id=list(stop_ids) or None,
                            pad_token_id=pad_token_id, **sampling)  # fmt: skip


@contextmanager
def own_generation_config(model: Any, generation_config: GenerationConfig) -> Iterator[None]:
    """Makes ``generation_config`` the model's for the duration. Passing it to ``generate`` is not enough:
    ``generate`` fills every field the passed config leaves unset from ``model.generation_config``."""
    kept = model.generation_config
    model.generation_config = generation_config
    try:
        yield
    finally:
        model.generation_config = kept


class HFGenerator:
    """Sampling with ``model.generate``; prompts left-padded, completions cut after their first stop id.

    The model's own ``generation_config`` is not used (:func:`rollout_generation_config`): the samples follow its
    softmax, with only gold's temperature / top-p / top-k and the mask of unspellable ids applied.

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
        self.generation_config = rollout_generation_config(config, stop_ids=sorted(self.stop.stop_ids),
                                                           pad_token_id=self.pad_id)  # fmt: skip
        ignored = sorted(key for key in model.generation_config.to_diff_dict()
                         if not key.startswith("_") and key not in _UNLOGGED)  # fmt: skip
        if ignored:
            logger.info("rollouts sample the model's own distribution: its generation_config's %s are not applied",
                        ", ".join(ignored))  # fmt: skip

    def rollout(self, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int] | None = None) -> list[Rollout]:
        """Samples ``num_generations`` completions per prompt. ``seeds`` are ignored: ``generate`` draws from the
        global RNG (the trainer seeds it per step)."""
        return [Rollout(ids) for ids in self.generate(prompts)]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """The ids of :meth:`rollout`."""
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
            with own_generation_config(self.model, self.generation_config):
                out = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    logits_processor=self.processors,
                    # a sharded model gathers its layers in every forward: every process steps until all are done
                    synced_gpus=is_sharded(self.model) and torch.distributed.is_initialized(),
                )
        finally:
            self.model.train(was_training)
        return [self.stop.cut(row) for row in out[:, width:].tolist()]
