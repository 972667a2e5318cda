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

from gold.cli.checks import say
from gold.cli.recipe import RecipeError
from gold.config import GoldConfig
from gold.data.files import Rows, check_prompt_lengths, examples_from_rows, read_rows, training_examples
from gold.models.build import DTYPES, build_model, build_tokenizer, check_model_folder
from gold.teacher import SELF_TEACHERS, self_teacher
from gold.teacher.build import build_teacher, check_served_seq_kd, served_teacher
from gold.training.arguments import training_arguments
from gold.training.integrations import check_integrations
from gold.training.trainer import GoldTrainer


def build_trainer(config: GoldConfig, *, trainer_cls: type[GoldTrainer] = GoldTrainer) -> GoldTrainer:
    """Tokenizers, data, models and trainer of a run (``trainer_cls``: e.g. the SFT baseline
    :class:`gold.training.baselines.SequenceKDTrainer`, on the same data path). Everything that can be checked without
    the models (integrations, rows, prompt lengths in both tokenizations, model folders, a served teacher) is checked
    before they load."""
    args = training_arguments(config.training)
    check_integrations(args)  # wandb, the hub, the accelerate launch: before anything loads
    check_served_seq_kd(config.teacher, config.rollout)
    stage = stages(enabled=args.process_index == 0)
    self_kind = config.teacher.model if config.teacher.model in SELF_TEACHERS else None
    student_tokenizer = build_tokenizer(config.student)
    teacher_tokenizer = student_tokenizer if self_kind else build_tokenizer(config.teacher)
    examples = training_examples(config)
    if isinstance(examples, Rows):
        check_prompt_lengths(examples, {"student": student_tokenizer, "teacher": teacher_tokenizer},
                             limit=config.rollout.max_prompt_length, labels=examples.labels)  # fmt: skip
        examples.checked_prompt_limit = config.rollout.max_prompt_length  # the trainer need not check them again
    held_out = None
    if config.data.eval_path is not None:
        held_out = examples_from_rows(read_rows(config.data.eval_path, what="data.eval_path"), config.data)
        if args.eval_steps is None:
            raise RecipeError("data.eval_path is set: give training.eval_steps (how often to score the held-out set)")
    for spec in (config.student, config.teacher):
        if spec.model and Path(spec.model).is_dir():
            check_model_folder(Path(spec.model))
    server_url = getattr(config.teacher, "server_url", None)  # a TeacherConfig's; a plain ModelConfig has none
    served = served_teacher(config.teacher, teacher_tokenizer) if server_url else None  # checked before models load
    # the lines start here, once every check has passed: a refused input stays one line
    rows = f"{len(examples)} rows" if isinstance(examples, list) else "streamed rows"
    stage(f"tokenizers and {rows} checked; loading the student ({config.student.model}; a zoo model is dequantized "
          "once per machine)")  # fmt: skip
    student = build_model(config.student, student_tokenizer, seed=args.seed)
    stage(f"loading the teacher ({config.teacher.model or 'its server or cache'})")
    if self_kind:  # self-distillation: the student's start (frozen copy) or the student itself
        teacher = self_teacher(self_kind, student, student_tokenizer, device=config.teacher.device or args.device,
                               dtype=DTYPES.get(config.teacher.dtype))  # fmt: skip
    else:  # a served or cached teacher, or a local model
        teacher = build_teacher(config.teacher, teacher_tokenizer, device=config.teacher.device or args.device,
                                seed=args.seed + 1, served=served)  # fmt: skip
    stage("building the trainer: the pair tables of both vocabularies, then every row encoded and aligned")
    trainer = trainer_cls(student, teacher, args=args, train_dataset=examples, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer, loss=config.loss, rollout=config.rollout,
                          alignment=config.alignment, held_out=held_out,
                          held_out_samples=config.data.eval_samples, peft_config=config.student.peft)  # fmt: skip
    stage("ready to train")
    return trainer


def stages(*, enabled: bool) -> Callable[[str], None]:
    """A printer of ``gold train: <stage> …`` lines on stderr, each with the seconds since the first (the main
    process's only, when ``enabled``)."""
    start = time.perf_counter()

    def stage(text: str) -> None:
        if enabled:
            say(f"gold train: [{time.perf_counter() - start:5.1f} s] {text}", file=sys.stderr, flush=True)

    return stage
