"""A model's output layer applied outside the model, to chosen rows of its hidden states.

The loss from hidden states (the GPU path) runs each model without its output layer and applies the layer only to
the rows a chunk of groups needs, so neither side's (B, T, V) logits exist. That is only right if the layer is
reproduced exactly, with the architecture's post-processing: Gemma-2/3's final soft-capping
(``tanh(z / c) · c``), Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``; tied embeddings need nothing (the
output embedding *is* the input one). :func:`output_head` reads them from a model and refuses, with the reason, any
architecture not checked here (``tests/gold/losses/test_head.py`` compares every listed type with the model's own
logits), so that the caller falls back to the model's logits instead of training on wrong numbers. A LoRA-adapted
output layer (a PEFT student, :mod:`gold.models.lora`) is applied as the adapter computes it,
``h Wᵀ + scale · (h Aᵀ) Bᵀ`` with the live A and B, so its gradient reaches the adapter and the frozen W stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gold.models.lora import is_lora_layer, lora_factors

# model types whose logits are ``lm_head(h)`` followed by at most the post-processing below (checked in the tests)
VERIFIED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "cohere", "granite")
# config fields that change logits in some architecture; a model that sets one we do not apply is refused
POST_PROCESSING_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class OutputHead:
    """``softcap(scale · (h Wᵀ + b + lora_scale · (h Aᵀ) Bᵀ))`` of one model.

    Attributes:
        weight: (V, H) the output embedding (the input one when tied).
        bias: (V,) or None.
        scale: multiplies the logits (Cohere ``logit_scale``, Granite ``1 / logits_scaling``; else 1).
        softcap: ``c`` of ``tanh(z / c) · c`` (Gemma-2/3 ``final_logit_softcapping``), or None.
        lora_a: (r, H) a LoRA adapter's down projection A on the output layer, or None (no adapter).
        lora_b: (V, r) its up projection B (given with ``lora_a``).
        lora_scale: the adapter's ``alpha / r`` (or rsLoRA's ``alpha / √r``).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float = 1.0
    softcap: float | None = None
    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    lora_scale: float = 1.0

    @property
    def requires_grad(self) -> bool:
        """Whether logits from it carry gradients to the layer (its weight, or its adapter's A and B)."""
        return self.weight.requires_grad or (self.lora_a is not None and self.lora_a.requires_grad)

    def detach(self) -> OutputHead:
        """The same layer outside the autograd graph (a teacher's: no gradients)."""
        bias = None if self.bias is None else self.bias.detach()
        lora_a = None if self.lora_a is None else self.lora_a.detach()
        lora_b = None if self.lora_b is None else self.lora_b.detach()
        return OutputHead(self.weight.detach(), bias, self.scale, self.softcap, lora_a, lora_b, self.lora_scale)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., V) float32 logits of (..., H) hidden states. The product runs in the weight's dtype, as the model's
        own layer does (its kernels accumulate in float32); an adapter is added in the order peft adds it; scaling
        and soft-capping run in float32."""
        logits = F.linear(hidden.to(self.weight.dtype), self.weight, self.bias)
        if self.lora_a is not None and self.lora_b is not None:
            low_rank = F.linear(hidden.to(self.lora_a.dtype), self.lora_a)  # (..., r)
            logits = logits + F.linear(low_rank, self.lora_b) * self.lora_scale
        logits = logits.float()
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def output_head(model: Any) -> tuple[OutputHead | None, str]:
    """The model's :class:`OutputHead`, or None and why it cannot be reproduced (then use the model's logits)."""
    config = getattr(model.config, "text_config", None) or model.config
    kind = getattr(config, "model_type", None)
    if kind not in VERIFIED_TYPES:
        return (
            None,
            f"model type {kind!r} is not among those whose output layer gold reproduces ({', '.join(VERIFIED_TYPES)})",
        )
    layer = model.get_output_embeddings()
    adapter: tuple[torch.Tensor | None, torch.Tensor | None, float] = (None, None, 1.0)
    if is_lora_layer(layer):
        factors = lora_factors(layer)
        if isinstance(factors, str):
            return None, factors
        layer, adapter = factors[0], factors[1:]
    if not isinstance(layer, torch.nn.Linear):
        return None, f"the output layer is a {type(layer).__name__}, not a Linear"
    scale, softcap = 1.0, None
    for name in POST_PROCESSING_FIELDS:
        value = getattr(config, name, None)
        if value is None:
            continue
        if name == "final_logit_softcapping":
            softcap = float(value)
        elif name == "logit_scale" and kind == "cohere":
            scale *= float(value)
        elif name == "logits_scaling" and kind == "granite":
            scale /= float(value)
        else:
            return None, f"{kind} sets {name}={value!r}, which gold does not apply"
    return OutputHead(layer.weight, layer.bias, scale, softcap, *adapter), ""
