"""LoRA and other PEFT students: wrapping a student in adapters, and the merged weights that a rollout engine, a
colocated vLLM start or an export needs.

Only the adapters train; the base weights are never written (no ``merge_adapter``/``unmerge_adapter`` round trip,
which would leave them off by float rounding). Wherever plain weights are needed, :func:`merged_state_dict` computes
``W + scale · B @ A`` beside them, under the base model's names, so vLLM and ``AutoModelForCausalLM`` read the adapted
student as an ordinary model. ``peft`` is imported only here and only when used (``gold-distill[peft]``).

Shape legend: V output rows, H hidden size, r adapter rank.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from gold.extras import require

# the recipe's short names (student.peft) → LoraConfig's; any other LoraConfig field passes through as named
LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
FEATURE = "a LoRA student (student.peft / peft_config=)"


def lora_config(section: dict[str, Any]) -> Any:
    """A causal-LM ``peft.LoraConfig`` from a recipe's ``student.peft`` section (``{r, alpha, dropout,
    target_modules, ...}``; other keys are LoraConfig fields)."""
    peft = require("peft", feature=FEATURE)
    fields = {LORA_ALIASES.get(key, key): value for key, value in section.items()}
    try:
        return peft.LoraConfig(task_type="CAUSAL_LM", **fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"student.peft {section!r}: {err}; give LoraConfig fields (r, alpha, dropout, "
                         "target_modules, ...)") from None  # fmt: skip


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (never imports peft: without it loaded, no model is one)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def peft_student(model: Any, peft_config: Any) -> Any:
    """``model`` wrapped in the adapters ``peft_config`` describes (a ``peft.PeftConfig``, or a ``student.peft``
    dict); only the adapters require gradients. A model already wrapped is returned as it is only without a config.

    Raises:
        ValueError: the output layer is tied to the input embedding and the config adapts it: the merged model
            would need two different matrices where the architecture keeps one.
    """
    peft = require("peft", feature=FEATURE)
    if is_peft_model(model):
        raise ValueError("the student is already a PeftModel: pass it without peft_config (or the base model with it)")
    config = lora_config(peft_config) if isinstance(peft_config, dict) else peft_config
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    with warnings.catch_warnings():  # peft warns of an adapted tied layer; gold refuses it below, saying why
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*", category=UserWarning)
        wrapped = peft.get_peft_model(model, config)
    if tied and is_lora_layer(wrapped.get_output_embeddings()):
        wrapped.unload()  # the caller's model back as it was
        raise ValueError("the student's output layer is tied to its input embedding (tie_word_embeddings), and "
                         "the adapter config targets it: a merged student would need two matrices where the model "
                         "keeps one; leave the output layer (lm_head) out of target_modules")  # fmt: skip
    return wrapped


def is_lora_layer(layer: Any) -> bool:
    """Whether ``layer`` is a peft LoRA layer (``base_layer`` plus ``lora_A``/``lora_B`` per adapter)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(layer, peft.tuners.lora.LoraLayer)


def lora_factors(layer: Any) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor, float] | str:
    """``(base, A, B, scale)`` of a LoRA-adapted Linear whose output is ``base(h) + scale · B(A(h))``, with
    A (r, H) and B (V, r) the live parameters; or why the layer is not that (then use the model's logits)."""
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return f"its output layer carries {len(active)} active LoRA adapters; gold applies exactly one"
    name = active[0]
    base, down, up = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    dropout = layer.lora_dropout[name]
    if not isinstance(base, torch.nn.Linear) or getattr(layer, "fan_in_fan_out", False):
        return f"its adapted output layer wraps a {type(base).__name__} (fan_in_fan_out), not a plain Linear"
    if layer.use_dora.get(name) or up.bias is not None or getattr(layer, "merged", False):
        return "its output layer's adapter is DoRA, has a bias, or is merged: only plain LoRA is reproduced"
    if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
        return (f"its output layer's adapter has dropout {dropout.p} (the model drops a fresh mask in every forward "
                "that a head applied outside it cannot repeat); set student.peft.dropout: 0.0")  # fmt: skip
    return base, down.weight, up.weight, float(layer.scaling[name])


def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The adapted student's weights as a plain model of its base architecture would hold them: ``W + scale · B @ A``
    for every LoRA-adapted layer, other weights as they are, under the base model's names; nothing is written into
    the model. Tuners other than plain LoRA (DoRA, IA³, modules_to_save, ...) are merged by peft on a copy."""
    if not _plain_lora(model):
        merged = copy.deepcopy(model).merge_and_unload()
        return {name: tensor.detach() for name, tensor in merged.state_dict().items()}
    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if is_lora_layer(module) and module.active_adapters:
            with torch.no_grad():
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in module.active_adapters)
    out = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        out[plain] = tensor.detach() + deltas[plain] if plain in deltas else tensor.detach()
    return out


def _plain_lora(model: Any) -> bool:
    """Every adapter is LoRA without DoRA, extra trainable modules or token tables (deltas are ``scale · B @ A``)."""
    for config in model.peft_config.values():
        if config.peft_type != "LORA" or config.use_dora or config.modules_to_save or config.trainable_token_indices:
            return False
    return not any(".lora_magnitude_vector." in key or ".lora_bias." in key for key in model.state_dict())


def save_merged(model: Any, folder: str | Path) -> None:
    """Saves the adapted student as a plain model of its base architecture (config and merged safetensors) that
    ``AutoModelForCausalLM.from_pretrained`` and vLLM load; the model itself is unchanged."""
    base = model.get_base_model()
    base.save_pretrained(str(folder), state_dict=merged_state_dict(model), safe_serialization=True)


def student_weights(model: Any) -> dict[str, torch.Tensor]:
    """The student's weights under its architecture's names: merged for a PEFT student, else its state dict."""
    return merged_state_dict(model) if is_peft_model(model) else dict(model.state_dict())


def save_student(model: Any, folder: str | Path) -> None:
    """``save_pretrained`` of the student as a plain model (merged when it carries adapters)."""
    if is_peft_model(model):
        save_merged(model, folder)
    else:
        model.save_pretrained(str(folder), safe_serialization=True)


def load_adapted(base: Any, checkpoint: str | Path) -> Any:
    """``base`` with the adapter saved in ``checkpoint`` (``adapter_config.json`` and ``adapter_model.*``)."""
    peft = require("peft", feature="merging a LoRA checkpoint (gold export --merge)")
    return peft.PeftModel.from_pretrained(base, str(checkpoint), is_trainable=False)
