"""Rollouts with ``transformers`` ``generate`` (the default engine; :mod:`gold.rollout.vllm` is the other)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from gold.config import RolloutConfig
from gold.data.examples import logit_rows, pad_id
from gold.models.sharding import is_sharded
from gold.models.stops import StopRule, model_stop_rule
from gold.rollout.base import Rollout, spellable_ids


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
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=self.config.max_completion_length,
                logits_processor=self.processors,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.stop.stop_ids) or None,
                # a sharded model gathers its layers in every forward: every process steps until all are done
                synced_gpus=is_sharded(self.model) and torch.distributed.is_initialized(),
                **self._sampling(),
            )
        finally:
            self.model.train(was_training)
        return [self.stop.cut(row) for row in out[:, width:].tolist()]
