"""Build everything a :class:`gold.config.GoldConfig` names and train: what ``gold train`` runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from gold.chat import set_chat_template
from gold.config import GoldConfig, ModelConfig
from gold.data import examples_from_rows
from gold.data_files import Rows, read_rows
from gold.demo_task import tiny_model
from gold.recipe import RecipeError
from gold.teacher import LocalTeacher
from gold.trainer import GoldTrainer
from gold.zoo import MODEL_TOKENIZERS, MODELS, load_model, load_tokenizer, refuse_custom_code

DEFAULT_OUTPUT_DIR = "out/gold"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tokenizer(spec: ModelConfig) -> Any:
    """The tokenizer a model section names (``tokenizer``, else the model's own), with the section's
    ``chat_template`` when it gives one (:func:`gold.chat.set_chat_template`)."""
    name = spec.tokenizer or spec.model
    tokenizer = load_tokenizer(MODEL_TOKENIZERS.get(name, name), trust_remote_code=spec.trust_remote_code)
    if spec.chat_template is not None:
        try:
            set_chat_template(tokenizer, spec.chat_template)
        except ValueError as err:
            raise RecipeError(str(err)) from None
    return tokenizer


def build_model(spec: ModelConfig, tokenizer: Any, *, seed: int) -> Any:
    """A zoo model, a local directory (never the hub), or a random ``tiny`` Llama sized to the tokenizer."""
    dtype = DTYPES.get(spec.dtype)
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
                                                     trust_remote_code=spec.trust_remote_code)  # fmt: skip
    else:
        raise RecipeError(
            f"model {spec.model!r} is not a zoo model ({', '.join(MODELS)}), a local directory, or 'tiny'; "
            "download hub models first (huggingface-cli download ORG/NAME --local-dir DIR) and give DIR"
        )
    return model.to(dtype) if dtype is not None else model


def check_model_folder(folder: Path) -> None:
    """A model folder holds a config and weights; names the folder and what is missing (before loading)."""
    if not (folder / "config.json").is_file():
        raise RecipeError(f"model folder {str(folder)!r} has no config.json: not a Hugging Face model folder "
                          "(save one with model.save_pretrained(DIR))")  # fmt: skip
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((folder / name).is_file() for name in weights):
        raise RecipeError(f"model folder {str(folder)!r} holds no weights (none of {', '.join(weights)}); an "
                          "interrupted save or download? save the model again")  # fmt: skip


def training_arguments(values: dict[str, Any]) -> TrainingArguments:
    """``TrainingArguments`` from the recipe's ``training`` section, naming an unknown key."""
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in values:
        if key not in known:
            raise RecipeError(f"unknown key {key!r} in training (transformers.TrainingArguments has no such field)")
    settings = {"output_dir": DEFAULT_OUTPUT_DIR, "report_to": [], **values}
    return TrainingArguments(**settings)


def build_trainer(config: GoldConfig, *, trainer_cls: type[GoldTrainer] = GoldTrainer) -> GoldTrainer:
    """Tokenizers, models, data and trainer of a run (``trainer_cls``: e.g. the SFT baseline
    :class:`gold.baselines.SequenceKDTrainer`, on the same data path)."""
    args = training_arguments(config.training)
    student_tokenizer, teacher_tokenizer = build_tokenizer(config.student), build_tokenizer(config.teacher)
    student = build_model(config.student, student_tokenizer, seed=args.seed)
    teacher_model = build_model(config.teacher, teacher_tokenizer, seed=args.seed + 1)
    teacher = LocalTeacher(teacher_model, teacher_tokenizer, device=config.teacher.device or args.device)
    rows = read_rows(config.data.path)
    examples = Rows(examples_from_rows(rows, config.data))
    examples.labels = rows.labels  # the trainer names a too-long prompt by file and line
    held_out = None
    if config.data.eval_path is not None:
        held_out = examples_from_rows(read_rows(config.data.eval_path, what="data.eval_path"), config.data)
        if args.eval_steps is None:
            raise RecipeError("data.eval_path is set: give training.eval_steps (how often to score the held-out set)")
    return trainer_cls(student, teacher, args=args, train_dataset=examples, student_tokenizer=student_tokenizer,
                       teacher_tokenizer=teacher_tokenizer, loss=config.loss, rollout=config.rollout,
                       alignment=config.alignment, held_out=held_out,
                       held_out_samples=config.data.eval_samples)  # fmt: skip
