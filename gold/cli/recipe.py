"""YAML recipes ↔ :class:`gold.config.GoldConfig`, and ``section.key=value`` overrides.

The YAML mirrors the dataclass nesting::

    student: {model: tiny, tokenizer: smollm2, tiny: {hidden_size: 64}}
    teacher: {model: out/teacher, tokenizer: mistral-v1}
    data: {path: data/train.jsonl}
    loss: {hybrid_weight: 1.0, beta: 0.5}
    rollout: {lmbda: 0.5, max_completion_length: 64}
    training: {output_dir: out/run, max_steps: 100, learning_rate: 1.0e-4}
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gold.config import (
    AlignmentConfig,
    DataConfig,
    GoldConfig,
    LossConfig,
    ModelConfig,
    RecipeError,
    RolloutConfig,
)
from gold.teacher.config import TeacherConfig

SECTIONS: dict[str, type] = {
    "student": ModelConfig,
    "teacher": TeacherConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "rollout": RolloutConfig,
    "alignment": AlignmentConfig,
}
# sections whose value is a free mapping (checked later: TrainingArguments, tiny model fields)
FREE_SECTIONS = ("training",)
# several teachers: id → teacher section, and their mixing weights (gold.training.teachers)
TEACHER_SETS = ("teachers", "teacher_weights")


def _unknown(key: str, known: Sequence[str], where: str) -> RecipeError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RecipeError(f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


_SCALARS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _check_type(annotation: str, value: Any, where: str, key: str) -> None:
    """A scalar field gets a value of its type: ``seq_kd: maybe`` is not a bool, ``beta: true`` not a float,
    ``max_completion_length: 2.5`` not an int; floats are finite."""
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    allowed = [t for kind in kinds for t in _SCALARS.get(kind, ())]
    if not allowed:
        return  # Literal, dict, ...: checked by the dataclass
    wrong_bool = isinstance(value, bool) and bool not in allowed
    if wrong_bool or not isinstance(value, tuple(allowed)):
        raise RecipeError(f"{where}.{key} must be {' or '.join(kinds)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{where}.{key} must be a finite number, got {value!r}")


def _section(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise RecipeError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = list(fields)
    for key in values:
        if key not in known:
            raise _unknown(str(key), known, where)
        _check_type(str(fields[key].type), values[key], where, str(key))
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from None


def config_from_dict(raw: Mapping[str, Any]) -> GoldConfig:
    """Build and validate a :class:`GoldConfig` from nested mappings (e.g. parsed YAML)."""
    known = [*SECTIONS, *FREE_SECTIONS, *TEACHER_SETS]
    for key in raw:
        if key not in known:
            raise _unknown(str(key), known, "the recipe")
    if "teacher" in raw and "teachers" in raw:
        raise RecipeError("the recipe has both teacher: and teachers:; give teacher: for one teacher or teachers: "
                          "(id → teacher section) for several")  # fmt: skip
    for required in ("student", "data"):
        if required not in raw:
            raise RecipeError(f"the recipe has no {required!r} section; it needs student, teacher and data")
    if "teacher" not in raw and "teachers" not in raw:
        raise RecipeError("the recipe has no 'teacher' section; it needs student, teacher (or teachers) and data")
    sections = {name: _section(cls, raw[name], name) for name, cls in SECTIONS.items() if name in raw}
    sections.setdefault("teacher", None)
    if sections["student"].model in ("self", "self-dynamic"):
        raise RecipeError("student.model 'self' names a teacher kind (self-distillation): set teacher.model: self "
                          "or self-dynamic, and the student's model")  # fmt: skip
    training = raw.get("training", {}) or {}
    if not isinstance(training, Mapping):
        raise RecipeError(f"training must be a mapping of TrainingArguments fields, got {training!r}")
    _check_training(training)
    teachers = _teachers(raw["teachers"]) if "teachers" in raw else {}
    weights = _teacher_weights(raw.get("teacher_weights"))
    try:
        return GoldConfig(**sections, training=dict(training), teachers=teachers, teacher_weights=weights)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def _teachers(values: Any) -> dict[str, TeacherConfig]:
    """``teachers:``: a non-empty mapping of teacher ids to teacher sections (each read as ``teacher:`` is)."""
    if not isinstance(values, Mapping) or not values:
        raise RecipeError(f"teachers must be a non-empty mapping of teacher ids to teacher sections, got {values!r}; "
                          "e.g. teachers: {math: {model: ...}, code: {model: ...}}")  # fmt: skip
    for teacher_id in values:
        if not isinstance(teacher_id, str) or not teacher_id or "/" in teacher_id:
            raise RecipeError(f"teachers: the id {teacher_id!r} must be a non-empty string without '/' (it names "
                              "the teacher in rows and logs)")  # fmt: skip
    return {teacher_id: _section(TeacherConfig, section, f"teachers.{teacher_id}")
            for teacher_id, section in values.items()}  # fmt: skip


def _teacher_weights(values: Any) -> dict[str, float] | None:
    """``teacher_weights:`` (mixing): a mapping of teacher ids to numbers, checked against the teachers later."""
    if values is None:
        return None
    if not isinstance(values, Mapping) or not values:
        raise RecipeError(f"teacher_weights must be a mapping of teacher ids to weights >= 0, got {values!r}")
    return dict(values)


def _check_training(training: Mapping[str, Any]) -> None:
    """The TrainingArguments values a typo makes absurd, refused before anything loads: no NaN or infinity anywhere,
    counts that are positive integers, rates and ratios in their ranges."""
    for key, value in training.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"training.{key} must be a finite number, got {value!r}")
    if "output_dir" in training and (not isinstance(training["output_dir"], str) or not training["output_dir"].strip()):
        raise RecipeError(f"training.output_dir must be a folder path, got {training['output_dir']!r}; give the "
                          "folder for checkpoints and the student, e.g. out/run (left out: out/gold)")  # fmt: skip
    steps = training.get("max_steps", -1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps == 0 or steps < -1:
        raise RecipeError(f"training.max_steps must be a positive integer (or -1: use num_train_epochs), got {steps!r}")
    _in_range(training, "learning_rate", 0, 1, "a larger step diverges; typical: 1e-6 to 1e-3")
    _in_range(training, "weight_decay", 0, 1, "the share of each weight removed per step")
    _in_range(training, "warmup_ratio", 0, 1, "a share of the training steps")
    _in_range(training, "max_grad_norm", 0, math.inf, "0 turns clipping off")
    _in_range(training, "num_train_epochs", 0, math.inf, "above 0", low_open=True)
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_total_limit", "warmup_steps",
                "seed"):  # fmt: skip
        value = training.get(key)
        low = 0 if key in ("warmup_steps", "seed") else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise RecipeError(f"training.{key} must be an integer >= {low}, got {value!r}")
    for key in ("save_steps", "logging_steps", "eval_steps"):  # an integer, or a share of the steps below 1
        value = training.get(key)
        if value is None:
            continue
        ok = not isinstance(value, bool) and ((isinstance(value, int) and value >= 1) or (isinstance(value, float)
                                               and (0 < value < 1 or (value >= 1 and value.is_integer()))))  # fmt: skip
        if not ok:
            raise RecipeError(f"training.{key} must be an integer >= 1 (or a share of the steps in (0, 1)), "
                              f"got {value!r}")  # fmt: skip


def _in_range(training: Mapping[str, Any], key: str, low: float, high: float, why: str, low_open: bool = False) -> None:
    value = training.get(key)
    if value is None:
        return
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise RecipeError(f"training.{key} must be a number in {bounds} ({why}), got {value!r}")


def config_to_dict(config: GoldConfig) -> dict[str, Any]:
    """Nested plain mappings that :func:`config_from_dict` turns back into ``config``."""
    out = dataclasses.asdict(config)
    for key, absent in (("teacher", None), ("teachers", {}), ("teacher_weights", None)):  # a one-teacher recipe
        if out[key] == absent:  # keeps its form (and its run record, compared on resume)
            del out[key]
    return out


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``5e-5`` as a float (YAML 1.1 wants ``5.0e-5`` and would keep a string) and
    refuses a key given twice in one mapping (a second ``loss:`` section would silently replace the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RecipeError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                  "give each key once")  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str, where: str = "") -> Any:
    """Parsed YAML; a syntax error or a refused tag (``!!python/...``: recipes are plain data) becomes a
    :class:`RecipeError` naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = str(err.problem or err.context) + (f" ({err.context})" if err.problem and err.context else "")
        if isinstance(err, yaml.constructor.ConstructorError):
            problem += " (recipes hold plain values: no !!python tags)"
        raise RecipeError(f"{where or 'YAML'}{line}: {problem}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{where or 'YAML'}: {err}") from None
    except RecipeError as err:  # a duplicate key
        raise RecipeError(f"{where}: {err}" if where else str(err)) from None


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value``) overrides; values are parsed as YAML."""
    result: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path or "." not in path:
            raise RecipeError(f"override {item!r} must look like section.key=value, e.g. loss.beta=0.3")
        keys = path.split(".")
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {key!r} is not a section")
            node[key] = child = dict(child)
            node = child
        node[keys[-1]] = _yaml(text, f"override {item!r}")
    return result


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> GoldConfig:
    """Read a YAML recipe, apply ``key=value`` overrides, validate once."""
    source = Path(path)
    if not source.is_file():
        raise RecipeError(f"recipe {str(source)!r} does not exist")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"recipe {str(source)!r} is not UTF-8 text (byte offset {err.start}); re-save it as UTF-8"
                          ) from None  # fmt: skip
    raw = _yaml(text, f"recipe {source}") or {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"recipe {str(source)!r} must be a YAML mapping at the top level")
    return config_from_dict(apply_overrides(raw, overrides))


def dump_recipe(config: GoldConfig, path: str | Path) -> None:
    """Write ``config`` as YAML that :func:`load_recipe` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
