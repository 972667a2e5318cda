"""``gold export --merge CHECKPOINT OUT``: a LoRA checkpoint (adapter files only) as a plain model folder.

A PEFT student's checkpoints hold its adapter (``adapter_config.json``, ``adapter_model.safetensors``) and tokenizer,
not the base weights. Export loads the base (``--base``, else the folder or zoo model the adapter records), adds the
adapter, and writes ``W + scale · B @ A`` under the base architecture's names with the tokenizer, so that
``AutoModelForCausalLM.from_pretrained(OUT)``, ``gold eval`` and vLLM read it like any model.
"""

from __future__ import annotations

import argparse
import json

from gold.cli.checks import CommandError, writable_dir
from gold.config import ModelConfig, RecipeError
from gold.models.build import build_model
from gold.models.lora import load_adapted, save_merged
from gold.models.zoo import load_tokenizer


def run_export(args: argparse.Namespace) -> int:
    adapter_config = args.checkpoint / "adapter_config.json"
    if not adapter_config.is_file():
        raise CommandError(f"gold export: {args.checkpoint} holds no adapter_config.json: not a LoRA checkpoint (a "
                           "full fine-tuning checkpoint is already a model folder)")  # fmt: skip
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise CommandError(f"gold export: {args.out} exists and is not an empty folder; name a new folder")
    base = args.base or json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise CommandError(f"gold export: {adapter_config} names no base model (a random 'tiny' student?): give "
                           "--base MODEL (the zoo name or folder the run started from)")  # fmt: skip
    try:
        writable_dir(args.out, "OUT")
        model = load_adapted(build_model(ModelConfig(model=base), None, seed=0), args.checkpoint)
        tokenizer = load_tokenizer(str(args.checkpoint))
    except (RecipeError, ValueError, ImportError, OSError) as err:
        raise CommandError(f"gold export: {err}") from None
    save_merged(model, args.out)
    tokenizer.save_pretrained(str(args.out))
    print(f"gold export: {args.checkpoint} merged into {base} and written to {args.out}")
    return 0
