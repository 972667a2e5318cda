"""TRL configuration objects as ``GoldTrainer(args=...)``: a ``GOLDConfig``, ``GKDConfig`` or ``DistillationConfig``
(any TRL ``TrainingArguments`` subclass of the installed TRL) is read field by field, never half-ignored.

Every field gold has is taken into :class:`gold.config.LossConfig` / :class:`gold.config.RolloutConfig` (most keep
their TRL name; :data:`RENAMED` and :func:`_uld_terms` map the rest). A field gold cannot honour, set to anything but
its TRL default, is refused in one line that names it. Passing ``loss=`` / ``rollout=`` beside such a config is
fine, but a field both set to different values is refused. The ``TrainingArguments`` part is used as it is.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from transformers import TrainingArguments

from gold.config import LossConfig, RolloutConfig

logger = logging.getLogger(__name__)

# TRL fields that are gold fields of the same name and meaning
ROLLOUT_FIELDS = ("lmbda", "seq_kd", "max_completion_length", "temperature", "top_p", "top_k", "num_generations",
                  "use_vllm", "vllm_mode", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
                  "vllm_server_timeout", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size",
                  "vllm_max_model_length", "vllm_sync_frequency", "vllm_enable_sleep_mode",
                  "vllm_structured_outputs_regex", "num_completions_to_print")  # fmt: skip
LOSS_FIELDS = ("beta",)
# None in TRL means "all of them"; gold keeps its own default there
NONE_IS_ALL = ("num_completions_to_print",)
# TRL name → (gold section, gold name)
RENAMED = {
    "max_new_tokens": ("rollout", "max_completion_length"),  # GKDConfig
    "uld_student_temperature": ("loss", "student_temperature"),
    "uld_teacher_temperature": ("loss", "teacher_temperature"),
}
# read by the trainer itself (loading models given as ids, dropout), or without effect on what is trained
USED_BY_TRAINER = ("model_init_kwargs", "teacher_model_name_or_path", "teacher_model_revision",
                   "teacher_model_init_kwargs", "teacher_tokenizer_name_or_path", "trust_remote_code",
                   "disable_dropout", "generation_batch_size", "max_length", "use_uld_loss", "uld_use_hybrid_loss",
                   "uld_hybrid_matched_weight", "uld_hybrid_unmatched_weight", "uld_distillation_weight",
                   "log_completions", "log_completions_steps", "dataset_num_proc", "wandb_log_unique_prompts",
                   "log_unique_prompts", "callbacks", "pad_to_multiple_of", "ds3_gather_for_generation",
                   "vllm_group_port", "dataset_kwargs")  # fmt: skip
# why a field gold cannot honour is refused (the rest get a generic reason)
REASONS = {
    "uld_crossentropy_weight": "gold's cross-entropy term is loss.sft_weight (on completions the student did not "
    "write, never its own rollouts); pass loss=LossConfig(sft_weight=...)",
    "use_extended_uld": "gold always merges split tokens exactly at the byte level (alignment), it cannot be off",
    "uld_token_merge_strategy": "gold merges split tokens by their exact byte spans, not by a strategy",
    "uld_skip_student_eos": "gold aligns end tokens as their own group (alignment.end_group)",
    "uld_skip_teacher_eos": "gold aligns end tokens as their own group (alignment.end_group)",
    "packing": "gold batches prompt/completion pairs; it does not pack sequences",
}


def is_trl_config(args: Any) -> bool:
    """Whether ``args`` is a TRL config (a ``TrainingArguments`` subclass defined in the ``trl`` package)."""
    return isinstance(args, TrainingArguments) and type(args).__module__.split(".")[0] == "trl"


def from_trl_config(args: Any, loss: LossConfig | None,
                    rollout: RolloutConfig | None) -> tuple[LossConfig | None, RolloutConfig | None]:  # fmt: skip
    """gold's loss and rollout settings for a TRL config ``args`` (``loss``/``rollout``: what the caller passed
    besides it, or None). Raises ``ValueError`` naming a field gold cannot honour, or one set on both sides."""
    if not is_trl_config(args):
        return loss, rollout
    name, defaults = type(args).__name__, _defaults(args)
    set_fields = {f: getattr(args, f) for f in defaults if getattr(args, f) != defaults[f]}
    _refuse_unhonoured(name, set_fields)
    taken: dict[str, dict[str, Any]] = {"loss": {}, "rollout": {}}
    for field in ROLLOUT_FIELDS + LOSS_FIELDS:
        if field in defaults and not (field in NONE_IS_ALL and getattr(args, field) is None):
            taken["rollout" if field in ROLLOUT_FIELDS else "loss"][field] = (getattr(args, field), field in set_fields)
    for field, (section, gold_name) in RENAMED.items():
        if field in defaults:
            taken[section][gold_name] = (getattr(args, field), field in set_fields)
    for gold_name, value in _uld_terms(args, defaults).items():
        taken["loss"][gold_name] = (value, True)
    if getattr(args, "log_completions", False):
        taken["rollout"]["log_completions_steps"] = (getattr(args, "log_completions_steps", 100), True)
    if "max_length" in defaults and getattr(args, "max_length", None) is not None:
        room = args.max_length - taken["rollout"].get("max_completion_length", (0, False))[0]
        taken["rollout"]["max_prompt_length"] = (room, "max_length" in set_fields)
    merged_loss = _merge(name, "loss", LossConfig, loss, taken["loss"])
    merged_rollout = _merge(name, "rollout", RolloutConfig, rollout, taken["rollout"])
    _note_generations(name, args, merged_rollout)
    return merged_loss, merged_rollout


def _defaults(args: Any) -> dict[str, Any]:
    """The TRL-only fields of ``args``'s class (not ``TrainingArguments``'s) and their declared defaults (the two TRL
    derives in ``__post_init__``, ``generation_batch_size`` and ``pad_to_multiple_of``, gold does not read)."""
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    out = {}
    for field in dataclasses.fields(args):
        if field.name not in base:
            factory = field.default_factory
            out[field.name] = field.default if factory is dataclasses.MISSING else factory()
    return out


def _refuse_unhonoured(name: str, set_fields: dict[str, Any]) -> None:
    known = set(ROLLOUT_FIELDS) | set(LOSS_FIELDS) | set(RENAMED) | set(USED_BY_TRAINER)
    for field, value in set_fields.items():
        if field not in known:
            reason = REASONS.get(field, "gold has no such setting, and a run without it is not the run asked for")
            raise ValueError(f"{name}.{field}={value!r} cannot be honoured: {reason}; leave it at its default")


def _uld_terms(args: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """TRL GOLD's loss choice in gold's terms: ``use_uld_loss`` off is GKD's generalized JSD, which on an aligned
    pair is gold's hybrid (every token matched on one tokenizer); ULD alone is ``uld_weight``; the hybrid is
    ``hybrid_weight`` with fixed matched/unmatched weights when TRL gives them, else gold's mass weighting."""
    if "use_uld_loss" not in defaults or not args.use_uld_loss:
        return {}
    weight = float(getattr(args, "uld_distillation_weight", 1.0))
    if not getattr(args, "uld_use_hybrid_loss", False):
        return {"hybrid_weight": 0.0, "uld_weight": weight}
    terms: dict[str, Any] = {"hybrid_weight": weight, "uld_weight": 0.0}
    matched, unmatched = args.uld_hybrid_matched_weight, args.uld_hybrid_unmatched_weight
    if matched is not None and unmatched is not None:
        terms.update(hybrid_weighting="fixed", hybrid_matched_weight=float(matched),
                     hybrid_unmatched_weight=float(unmatched))  # fmt: skip
    return terms


def _merge(name: str, section: str, cls: type, given: Any, taken: dict[str, tuple[Any, bool]]) -> Any:
    """``given`` (or the defaults) with every TRL value taken, unless ``given`` itself sets the field: then the two
    must agree when the TRL config set it too."""
    base = dataclasses.asdict(given) if given is not None else {}
    plain = dataclasses.asdict(cls())
    values = {}
    for field, (value, trl_set) in taken.items():
        mine = base.get(field, plain[field])
        if given is not None and mine != plain[field]:
            if trl_set and mine != value:
                raise ValueError(f"{name}.{field}={value!r} and {section}={cls.__name__}({field}={mine!r}) disagree; "
                                 "set it in one of them")  # fmt: skip
            continue
        values[field] = value
    if values:
        logger.info("from %s: %s", name, ", ".join(f"{section}.{k}={v!r}" for k, v in values.items()))
    return dataclasses.replace(given if given is not None else cls(), **values)


def _note_generations(name: str, args: Any, rollout: RolloutConfig) -> None:
    """TRL's batch counts completions (prompts × num_generations); gold's counts prompts. Say so when it matters."""
    if rollout.num_generations > 1:
        logger.warning("%s.num_generations=%d: gold's per_device_train_batch_size counts prompts, each rolled out %d "
                       "times (%d rows per slice); TRL's counts rows", name, rollout.num_generations,
                       rollout.num_generations, args.per_device_train_batch_size * rollout.num_generations)  # fmt: skip
