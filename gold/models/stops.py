"""How a completion ends: each model's stop ids and its end token.

A completion that *ended* (a dataset row; a sample that produced a stop id) gets one zero-byte end group
after its last byte (DESIGN §3): on each side its own end token, predicted from the last completion
position. Which token that is, per side:

1. the stop id the side sampled (a rollout, a teacher sample);
2. else the token its chat template writes right after the assistant's content (``<|im_end|>``,
   ``<|eot_id|>``, ``<end_of_turn>``);
3. else its ``eos_token_id``.

Stop ids are the union of the model's ``generation_config.eos_token_id`` (a list for Llama-3.x and
Qwen2.5-Instruct), the tokenizer's EOS and the end token: sampling stops at, and completions are cut
after, the first of any of them. No other special id may appear inside a completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

_MARK = "\u2063gold-end-mark\u2063"


@dataclass(frozen=True)
class StopRule:
    """One model's stop ids and end token.

    Attributes:
        stop_ids: ids that end a sample (sampling stops at the first; it is kept as the end token).
        end_id: the end token of a completion that ended without a sampled stop id (dataset rows, and the
            side that did not sample); None when the tokenizer has none (then no end group is formed).
    """

    stop_ids: frozenset[int]
    end_id: int | None

    def split(self, ids: Sequence[int]) -> tuple[list[int], int | None]:
        """``ids`` up to the first stop id, and that id (None: no stop id, the sample was cut by the limit)."""
        for position, token in enumerate(ids):
            if token in self.stop_ids:
                return list(ids[:position]), int(token)
        return list(ids), None

    def cut(self, ids: Sequence[int]) -> list[int]:
        """``ids`` up to and including the first stop id (all of them when there is none)."""
        body, stop = self.split(ids)
        return body if stop is None else [*body, stop]


def chat_template_end_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant turn's content, if any."""
    if not tokenizer.chat_template:
        return None
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except (jinja2.TemplateError, ValueError, KeyError):  # a template that refuses this conversation shape
        return None
    after = str(text).split(_MARK, 1)[1] if _MARK in str(text) else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    specials = set(tokenizer.all_special_ids) | {
        token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    return int(ids[0]) if ids and ids[0] in specials else None


def _generation_eos(generation_config: Any | None) -> list[int]:
    if generation_config is None or generation_config.eos_token_id is None:
        return []
    eos = generation_config.eos_token_id
    return [int(i) for i in eos] if isinstance(eos, list | tuple) else [int(eos)]


def stop_rule(tokenizer: Any, generation_config: Any | None = None) -> StopRule:
    """The :class:`StopRule` of a tokenizer (and its model's generation config, when there is a model).

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        generation_config: ``model.generation_config``; its ``eos_token_id`` (int or list) adds stop ids.
    """
    end_id = chat_template_end_id(tokenizer)
    if end_id is None and tokenizer.eos_token_id is not None:
        end_id = int(tokenizer.eos_token_id)
    stops = set(_generation_eos(generation_config))
    for candidate in (tokenizer.eos_token_id, end_id):
        if candidate is not None:
            stops.add(int(candidate))
    return StopRule(frozenset(stops), end_id)


def model_stop_rule(model: Any, tokenizer: Any) -> StopRule:
    """:func:`stop_rule` of a causal LM with its tokenizer."""
    return stop_rule(tokenizer, model.generation_config)


def folder_stop_rule(folder: Any, tokenizer: Any) -> StopRule:
    """:func:`stop_rule` of a model folder's tokenizer and its ``generation_config.json`` (when the folder has one):
    a served teacher's stop ids, read without loading its weights."""
    from pathlib import Path

    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(folder) if (Path(folder) / "generation_config.json").is_file() else None
    return stop_rule(tokenizer, config)
