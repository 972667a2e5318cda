"""TRL's call shapes for :class:`gold.training.trainer.GoldTrainer`: ``model`` / ``teacher_model`` as objects or ids
(with ``model_init_kwargs`` / ``teacher_model_init_kwargs``), ``processing_class`` / ``teacher_processing_class`` for
the tokenizers (else each model's own, from its folder or id), and TRL's ``disable_dropout``."""

from __future__ import annotations

import json
from typing import Any

import torch

from gold.config import ModelConfig
from gold.models.build import build_model, build_tokenizer
from gold.teacher import LocalTeacher

# model_init_kwargs keys gold passes on (ModelConfig fields); others are refused by name
INIT_KEYS = ("dtype", "torch_dtype", "revision", "attn_implementation", "trust_remote_code")


def init_spec(name: str, init_kwargs: dict[str, Any] | str | None, *, what: str, trust_remote_code: bool = False,
              revision: str | None = None) -> ModelConfig:  # fmt: skip
    """The model section for a model given by id (zoo name, folder or hub id) and TRL-style init kwargs."""
    kwargs = json.loads(init_kwargs) if isinstance(init_kwargs, str) else dict(init_kwargs or {})
    unknown = sorted(set(kwargs) - set(INIT_KEYS))
    if unknown:
        raise ValueError(f"{what}_init_kwargs has {', '.join(map(repr, unknown))}, which gold does not pass on (it "
                         f"takes {', '.join(INIT_KEYS)}); load the model yourself and pass the object")  # fmt: skip
    for key in ("dtype", "torch_dtype"):
        if kwargs.get(key) is not None:
            kwargs[key] = str(kwargs[key]).removeprefix("torch.")
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    if revision is not None:
        kwargs.setdefault("revision", revision)
    return ModelConfig(model=name, **kwargs)


def resolve_models(model: Any, teacher: Any, args: Any, given: dict[str, Any],
                   several: bool = False) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """``(student, teacher, student_tokenizer, teacher_tokenizer)`` from whatever shape was passed: ``given`` holds
    the keyword arguments ``student_tokenizer``, ``teacher_tokenizer``, ``teacher_model``, ``processing_class``,
    ``teacher_processing_class``, ``model_init_kwargs`` and ``teacher_model_init_kwargs`` (None when absent).
    ``several``: the teachers come as ``teachers=`` (the teacher returned is None; one given as well is refused)."""
    teacher = _one_of("teacher", teacher, "teacher_model", given["teacher_model"])
    if several and teacher is not None:
        raise ValueError("teacher= and teachers= were both given; pass teacher= for one teacher or teachers= "
                         "({id: teacher}) for several")  # fmt: skip
    if teacher is None and not several:
        teacher = getattr(args, "teacher_model_name_or_path", None)
    if teacher is None and not several:
        raise ValueError("no teacher: pass teacher= (or TRL's teacher_model=), a model, a gold Teacher or a model id")
    student_tokenizer = _one_of("student_tokenizer", given["student_tokenizer"], "processing_class",
                                given["processing_class"])  # fmt: skip
    teacher_tokenizer = _one_of("teacher_tokenizer", given["teacher_tokenizer"], "teacher_processing_class",
                                given["teacher_processing_class"])  # fmt: skip
    if teacher_tokenizer is None and getattr(args, "teacher_tokenizer_name_or_path", None):
        teacher_tokenizer = build_tokenizer(ModelConfig(model=args.teacher_tokenizer_name_or_path))
    trust = bool(getattr(args, "trust_remote_code", False))
    model, student_tokenizer = _loaded("model", model, student_tokenizer, args,
                                       given["model_init_kwargs"] or getattr(args, "model_init_kwargs", None),
                                       trust=trust)  # fmt: skip
    if isinstance(teacher, str) or (not isinstance(teacher, LocalTeacher) and hasattr(teacher, "generate")):
        init = given["teacher_model_init_kwargs"] or getattr(args, "teacher_model_init_kwargs", None)
        teacher, teacher_tokenizer = _loaded("teacher_model", teacher, teacher_tokenizer, args, init, trust=trust,
                                             revision=getattr(args, "teacher_model_revision", None))  # fmt: skip
    if getattr(args, "disable_dropout", False):
        disable_dropout(model)
    return model, teacher, student_tokenizer, teacher_tokenizer


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    if value is not None and alias_value is not None and value is not alias_value:
        raise ValueError(f"{name}= and {alias}= name the same thing and were both given; pass one of them")
    return value if value is not None else alias_value


def _loaded(what: str, model: Any, tokenizer: Any, args: Any, init_kwargs: Any, *, trust: bool,
            revision: str | None = None) -> tuple[Any, Any]:  # fmt: skip
    """The model (loaded when given by id) and its tokenizer (the one given, else the model's own)."""
    if isinstance(model, str):
        spec = init_spec(model, init_kwargs, what=what, trust_remote_code=trust, revision=revision)
        tokenizer = tokenizer if tokenizer is not None else build_tokenizer(spec)
        return build_model(spec, tokenizer, seed=int(getattr(args, "seed", 0))), tokenizer
    if init_kwargs:
        raise ValueError(f"{what}_init_kwargs is set but {what} is already a model object; they are read only for a "
                         "model given by id")  # fmt: skip
    if tokenizer is None:
        source = getattr(model, "name_or_path", "") or ""
        if not source:
            side = (
                "student_tokenizer= (TRL: processing_class=)"
                if what == "model"
                else ("teacher_tokenizer= (TRL: teacher_processing_class=)")
            )
            raise ValueError(f"{what} is a model object without a folder or id to read its tokenizer from; pass "
                             f"{side} (its fast tokenizer)")  # fmt: skip
        tokenizer = build_tokenizer(ModelConfig(model=source))
    return model, tokenizer


def disable_dropout(model: Any) -> None:
    """Every dropout of ``model`` off (TRL's ``disable_dropout``, GOLDConfig's default)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
