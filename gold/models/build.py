"""Where models and tokenizers are built from a recipe's model section: zoo names, local folders, hub ids, and the
random ``tiny`` Llama sized to a tokenizer (tests, the demo, recipes that try the pipeline without weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from gold.config import ModelConfig, RecipeError
from gold.models.chat import set_chat_template
from gold.models.hub import hub_model, is_hub_id
from gold.models.zoo import MODEL_TOKENIZERS, MODELS, load_model, load_tokenizer, refuse_custom_code

# a model's weights, whole or indexed shards; then adapters and an FSDP full state dict (checkpoints)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin",
                "pytorch_model_fsdp.bin")  # fmt: skip

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tokenizer(spec: ModelConfig) -> Any:
    """The tokenizer a model section names (``tokenizer``, else the model's own), with the section's
    ``chat_template`` when it gives one (:func:`gold.models.chat.set_chat_template`)."""
    name = spec.tokenizer or spec.model
    tokenizer = load_tokenizer(MODEL_TOKENIZERS.get(name, name), trust_remote_code=spec.trust_remote_code)
    if spec.chat_template is not None:
        try:
            set_chat_template(tokenizer, spec.chat_template)
        except ValueError as err:
            raise RecipeError(str(err)) from None
    return tokenizer


def build_model(spec: ModelConfig, tokenizer: Any, *, seed: int) -> Any:
    """A zoo model, a local folder, a hub id (``from_pretrained``: downloads when online, else the local cache), or a
    random ``tiny`` Llama sized to the tokenizer; ``revision`` and ``attn_implementation`` go to ``from_pretrained``
    (``revision``: hub ids only)."""
    dtype = DTYPES.get(spec.dtype)
    if spec.revision is not None and not (is_hub_id(spec.model) and not Path(spec.model).is_dir()):
        raise RecipeError(f"revision {spec.revision!r} is for hub ids (ORG/NAME); model {spec.model!r} is not one")
    if spec.model == "tiny":
        model = tiny_model(tokenizer, seed=seed, **spec.tiny)
    elif spec.model in MODELS:
        model = load_model(spec.model, dtype=dtype)
    elif Path(spec.model).is_dir():
        try:
            refuse_custom_code(spec.model, trust_remote_code=spec.trust_remote_code)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        check_model_folder(Path(spec.model))
        model = AutoModelForCausalLM.from_pretrained(spec.model, local_files_only=True, dtype=dtype or "auto",
                                                     trust_remote_code=spec.trust_remote_code,
                                                     **_loading_kwargs(spec))  # fmt: skip
    elif is_hub_id(spec.model):
        model = hub_model(spec.model, dtype=dtype, trust_remote_code=spec.trust_remote_code, **_loading_kwargs(spec))
    else:
        raise RecipeError(f"model {spec.model!r} is not a zoo model ({', '.join(MODELS)}), a local folder, a hub id "
                          "(ORG/NAME) or 'tiny'")  # fmt: skip
    if spec.attn_implementation is not None and spec.model in (*MODELS, "tiny"):
        model.set_attn_implementation(spec.attn_implementation)
    return model.to(dtype) if dtype is not None else model


def _loading_kwargs(spec: ModelConfig) -> dict[str, Any]:
    """The optional ``from_pretrained`` arguments a model section sets."""
    pairs = (("revision", spec.revision), ("attn_implementation", spec.attn_implementation))
    return {key: value for key, value in pairs if value is not None}


def check_model_folder(folder: Path) -> None:
    """A model folder holds a config and weights; names the folder and what is missing (before loading)."""
    if (folder / "adapter_config.json").is_file() and not any((folder / name).is_file() for name in WEIGHT_FILES[:4]):
        raise RecipeError(f"model folder {str(folder)!r} holds a LoRA adapter, not a model; write the merged model "
                          f"with `gold export --merge {folder} OUT` and use OUT")  # fmt: skip
    if not (folder / "config.json").is_file():
        raise RecipeError(f"model folder {str(folder)!r} has no config.json: not a Hugging Face model folder "
                          "(save one with model.save_pretrained(DIR))")  # fmt: skip
    if not any((folder / name).is_file() for name in WEIGHT_FILES[:4]):
        raise RecipeError(f"model folder {str(folder)!r} holds no weights (none of {', '.join(WEIGHT_FILES[:4])}); an "
                          "interrupted save or download? save the model again")  # fmt: skip


def tiny_model(tokenizer: Any, *, seed: int, hidden_size: int = 64, layers: int = 2, heads: int = 4) -> Any:
    """A random Llama-architecture model sized to ``tokenizer``'s vocabulary (head size ``hidden_size / heads``;
    vLLM's CPU attention needs 32 or more)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)
