"""Build everything a :class:`gold.config.GoldConfig` names and train: what ``gold train`` runs.

Building a real pair takes minutes (a zoo model is dequantized from GGUF on first use, every row's completion is
encoded and aligned, the pair tables cover both vocabularies): each stage starts with a ``gold train: …`` line on
stderr, so that no stretch of it is silent (issue 30, item 4).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gold.cli.checks import say
from gold.cli.recipe import RecipeError
from gold.config import GoldConfig
from gold.data.files import Rows, check_prompt_lengths, examples_from_rows, read_rows, training_examples
from gold.models.build import DTYPES, build_model, build_tokenizer, check_model_folder
from gold.teacher import SELF_TEACHERS, self_teacher
from gold.teacher.build import build_teacher, check_served_seq_kd, served_teacher
from gold.training.arguments import training_arguments
from gold.training.integrations import check_integrations
from gold.training.teachers import DEFAULT_TEACHER, Routing
from gold.training.trainer import GoldTrainer


def build_trainer(config: GoldConfig, *, trainer_cls: type[GoldTrainer] = GoldTrainer) -> GoldTrainer:
    """Tokenizers, data, models and trainer of a run (``trainer_cls``: e.g. the SFT baseline
    :class:`gold.training.baselines.SequenceKDTrainer`, on the same data path). Everything that can be checked without
    the models (integrations, rows, their teachers, prompt lengths in every tokenization, model folders, a served
    teacher) is checked before they load. ``teachers:`` builds each teacher exactly as ``teacher:`` builds one."""
    args = training_arguments(config.training)
    check_integrations(args)  # wandb, the hub, the accelerate launch: before anything loads
    specs = config.teachers or {DEFAULT_TEACHER: config.teacher}
    for spec in specs.values():
        check_served_seq_kd(spec, config.rollout)
    stage = stages(enabled=args.process_index == 0)
    student_tokenizer = build_tokenizer(config.student)
    tokenizers = {teacher_id: student_tokenizer if spec.model in SELF_TEACHERS else build_tokenizer(spec)
                  for teacher_id, spec in specs.items()}  # fmt: skip
    examples = training_examples(config)
    routing = Routing(tuple(specs), config.teacher_weights, several=bool(config.teachers))
    if isinstance(examples, Rows):
        _check_rows(examples, routing, student_tokenizer, tokenizers, config.rollout.max_prompt_length)
        examples.checked_prompt_limit = config.rollout.max_prompt_length  # the trainer need not check them again
    held_out = None
    if config.data.eval_path is not None:
        held_out = examples_from_rows(read_rows(config.data.eval_path, what="data.eval_path"), config.data)
        if args.eval_steps is None:
            raise RecipeError("data.eval_path is set: give training.eval_steps (how often to score the held-out set)")
    for spec in (config.student, *specs.values()):
        if spec.model and Path(spec.model).is_dir():
            check_model_folder(Path(spec.model))
    served = {
        teacher_id: served_teacher(spec, tokenizers[teacher_id])
        for teacher_id, spec in specs.items()
        if getattr(spec, "server_url", None)
    }  # checked before models load (a plain ModelConfig has none)
    # the lines start here, once every check has passed: a refused input stays one line
    rows = f"{len(examples)} rows" if isinstance(examples, list) else "streamed rows"
    stage(f"tokenizers and {rows} checked; loading the student ({config.student.model}; a zoo model is dequantized "
          "once per machine)")  # fmt: skip
    student = build_model(config.student, student_tokenizer, seed=args.seed)
    teachers = {}
    for k, (teacher_id, spec) in enumerate(specs.items()):  # each on its own device when its section names one
        stage(f"loading {f'teacher {teacher_id!r}' if config.teachers else 'the teacher'} "
              f"({spec.model or 'its server or cache'})")  # fmt: skip
        teachers[teacher_id] = _teacher(spec, student, student_tokenizer, tokenizers[teacher_id],
                                        served.get(teacher_id), device=spec.device or args.device,
                                        seed=args.seed + 1 + k)  # fmt: skip
    stage("building the trainer: the pair tables of both vocabularies, then every row encoded and aligned")
    if config.teachers:
        given = {"teachers": teachers, "teacher_weights": config.teacher_weights}
    else:
        given = {"teacher": teachers[DEFAULT_TEACHER], "teacher_tokenizer": tokenizers[DEFAULT_TEACHER]}
    trainer = trainer_cls(student, args=args, train_dataset=examples, student_tokenizer=student_tokenizer,
                          loss=config.loss, rollout=config.rollout, alignment=config.alignment, held_out=held_out,
                          held_out_samples=config.data.eval_samples, peft_config=config.student.peft,
                          **given)  # fmt: skip
    stage("ready to train")
    return trainer


def _check_rows(examples: Rows, routing: Routing, student_tokenizer: Any, tokenizers: dict[str, Any],
                limit: int | None) -> None:  # fmt: skip
    """Each row names a teacher of the recipe (when it routes) and its prompts fit ``limit`` in the student's and its
    teachers' tokenizations, named by file and line."""
    for teacher_id, tokenizer in tokenizers.items():
        rows = [i for i, e in enumerate(examples) if teacher_id in dict(routing.routes(e, i))]
        check_prompt_lengths([examples[i] for i in rows], {"student": student_tokenizer, "teacher": tokenizer},
                             limit=limit, labels=[examples.labels[i] for i in rows])  # fmt: skip


def _teacher(spec: Any, student: Any, student_tokenizer: Any, tokenizer: Any, served: Any, *, device: Any,
             seed: int) -> Any:  # fmt: skip
    """One teacher section's teacher: the student itself or its frozen start (``self``, ``self-dynamic``), a served
    or cached teacher, or a local model."""
    if spec.model in SELF_TEACHERS:  # self-distillation: the student's start (frozen copy) or the student itself
        return self_teacher(spec.model, student, student_tokenizer, device=device, dtype=DTYPES.get(spec.dtype))
    return build_teacher(spec, tokenizer, device=device, seed=seed, served=served)


def stages(*, enabled: bool) -> Callable[[str], None]:
    """A printer of ``gold train: <stage> …`` lines on stderr, each with the seconds since the first (the main
    process's only, when ``enabled``)."""
    start = time.perf_counter()

    def stage(text: str) -> None:
        if enabled:
            say(f"gold train: [{time.perf_counter() - start:5.1f} s] {text}", file=sys.stderr, flush=True)

    return stage
