"""Completions sampled from a model (the student on-policy, the teacher for ``seq_kd``).

:class:`Generator` is the seam: anything with ``generate(prompts) -> completions`` plugs in (a vLLM
engine later). :class:`HFGenerator` uses ``transformers`` ``generate`` and never samples an id the
tokenizer cannot spell: embedding rows without a token (padding rows of a rounded-up vocabulary,
holes in the id space) get ``-inf`` logits before sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from alignment import token_bytes_table
from gold.config import RolloutConfig
from gold.data import completion_text, logit_rows, pad_id, prompt_ids


class Generator(Protocol):
    """Samples completions: ``num_generations`` per prompt, in prompt order, cut at EOS."""

    def generate(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]: ...


class MaskUnspellable(LogitsProcessor):
    """Sets the logits of ids without a token to ``-inf``.

    Args:
        allowed: (V,) bool, True for ids the tokenizer can spell (special tokens included).
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


def spellable_ids(tokenizer: Any, num_rows: int) -> torch.Tensor:
    """(num_rows,) bool: embedding rows that are a token of ``tokenizer``."""
    table = token_bytes_table(tokenizer)
    allowed = np.zeros(num_rows, dtype=bool)
    size = min(num_rows, table.vocab_size)
    allowed[:size] = table.known_mask[:size]
    return torch.from_numpy(allowed)


class HFGenerator:
    """Sampling with ``model.generate``; prompts left-padded, completions cut at EOS.

    Args:
        model: a causal LM (its embedding rows may exceed the tokenizer).
        tokenizer: its tokenizer.
        config: temperature (0: greedy), top-p, top-k, ``num_generations``, ``max_completion_length``.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RolloutConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.processors = LogitsProcessorList([MaskUnspellable(spellable_ids(tokenizer, logit_rows(model)))])
        eos = tokenizer.eos_token_id
        self.eos_id = None if eos is None else int(eos)
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
                eos_token_id=self.eos_id,
                **self._sampling(),
            )
        finally:
            self.model.train(was_training)
        return [self._cut(row) for row in out[:, width:].tolist()]

    def _cut(self, row: list[int]) -> list[int]:
        if self.eos_id is not None and self.eos_id in row:
            return row[: row.index(self.eos_id)]
        return row


def sample_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    config: RolloutConfig,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Completion texts (``num_generations`` per prompt, in prompt order), each model rendering its own prompt.

    Texts are decoded from the exact bytes of the sampled tokens, cut at EOS and to whole characters
    (:func:`gold.data.completion_text`); an empty string means the model stopped at once.
    """
    generator = HFGenerator(model, tokenizer, config)
    texts: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        batch = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        texts.extend(completion_text(tokenizer, row)[1] for row in generator.generate(batch))
    return texts
