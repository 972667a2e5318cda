"""What each ``gold`` command does once its arguments are parsed (:mod:`gold.cli.parser` builds the parser).

This module imports torch, transformers and the trainer: :func:`gold.cli.main` imports it only after the arguments
are known, so that ``gold --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from alignment import (
    AlignmentStats,
    VocabMap,
    align_texts,
    format_stats,
    html_page,
    raw_string_overlap,
    render_html,
    render_text,
)
from gold.cli.checks import CommandError, read_utf8, say, writable_dir, writable_file
from gold.cli.demo import DemoSettings
from gold.cli.demo import run_demo as demo_main
from gold.cli.export import run_export
from gold.cli.guard import check_resume, clear_run, prepare_output_dir, record_run, resolve_resume
from gold.cli.recipe import RecipeError, config_to_dict, dump_recipe, load_recipe
from gold.cli.run import build_trainer, check_model_folder
from gold.cli.teacher_cache import run_teacher_cache
from gold.data.examples import CompletionBytesError, DataError
from gold.data.files import read_rows
from gold.evaluation import run as eval_run
from gold.models.zoo import ZooPackageMissing, check_tokenizer_folder, load_tokenizer
from gold.rollout.vllm_memory import EngineStartError
from gold.rollout.vllm_server import ServerError
from gold.teacher.cache import CacheError
from gold.training.arguments import DEFAULT_OUTPUT_DIR
from gold.training.guard import CheckpointError, NonFiniteError, PeerFailure, last_checkpoint
from gold.training.rewards import RewardError

# A built-in sample for the demo: prose, numbers, accents, CJK, emoji with modifiers and ZWJ, code.
DEMO_TEXTS = [
    "Distillation moves knowledge from a teacher to a student: 1234 + 5678 = 6912.",
    "Le café était fermé, alors nous sommes allés à la bibliothèque à 9h30.",
    "東京は日本の首都です。人口は約1400万人。",
    "Emoji: 👍🏽 👩‍💻 🇫🇷 — and a combining mark: e\u0301.",
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
    "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
]


def _load(name: str, command: str) -> object:
    try:
        return load_tokenizer(name)
    except (ZooPackageMissing, ValueError, OSError) as err:
        raise CommandError(f"gold {command}: {err}") from None


def run_align(args: argparse.Namespace) -> int:
    try:
        text = read_utf8(args.file, "--file") if args.file else args.text
        if args.html:
            writable_file(args.html, "--html")
    except (OSError, DataError) as err:
        raise CommandError(f"gold align: {err}") from None
    if not text:
        raise CommandError("gold align: the text is empty; pass a TEXT argument or --file with content")
    student, teacher = _load(args.student, "align"), _load(args.teacher, "align")
    alignment = align_texts(student, teacher, text)
    print(render_text(alignment, max_groups=args.max_groups))
    print()
    print(format_stats(alignment.stats))
    if args.html:
        fragment = render_html(alignment, student_name=args.student, teacher_name=args.teacher)
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(html_page([fragment]), encoding="utf-8")
        say(f"\nHTML view written to {args.html}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    try:
        writable_dir(args.out, "--out")  # before the work, with --alignment-only too
    except OSError as err:
        raise CommandError(f"gold demo: {err}") from None
    if args.alignment_only:
        return run_alignment_demo(args)
    if args.teachers == 2:
        from gold.cli.demo_teachers import TeachersSettings, run_teachers_demo

        settings = TeachersSettings() if args.steps is None else TeachersSettings(steps=args.steps)
        return run_teachers_demo(args.out, settings)
    return demo_main(args.out, DemoSettings() if args.steps is None else DemoSettings(steps=args.steps))


def run_train(args: argparse.Namespace) -> int:
    try:
        config = load_recipe(args.recipe, args.overrides)
        recipe = config_to_dict(config)
        output_dir = Path(config.training.get("output_dir", DEFAULT_OUTPUT_DIR))
        writable_dir(output_dir, "training.output_dir")
        prepare_output_dir(output_dir, recipe, resume=args.resume, overwrite=args.overwrite)  # before any loading
        resume, notes = resolve_resume(output_dir, args.resume)
        notes += check_resume(Path(resume), recipe) if resume is not None else []
        trainer = build_trainer(config)
    except (RecipeError, DataError, CheckpointError, ZooPackageMissing, ValueError, ImportError, OSError,
            ServerError) as err:  # fmt: skip
        raise CommandError(f"gold train: {err}") from None
    if args.overwrite:
        clear_run(output_dir)  # only now that the new run is known to start
    for note in notes if trainer.is_world_process_zero() else []:
        say(f"gold train: {note}", file=sys.stderr)
    if trainer.is_world_process_zero():
        record_run(output_dir, recipe)
        _show_first_alignment(trainer)
    _train(trainer, resume, output_dir)
    if trainer.is_world_process_zero():
        dump_recipe(config, Path(trainer.args.output_dir) / "recipe.yaml")
        say(f"gold train: student saved to {trainer.args.output_dir}")
    return 0


def _show_first_alignment(trainer: Any) -> None:
    """How the two tokenizers split the first training completion (the groups the loss compares)."""
    first = next(iter(trainer.train_dataset))
    alignment = align_texts(trainer.student_tokenizer, trainer.teacher_of(first).tokenizer, first.completion)
    print("gold train: the first completion, as each side tokenizes it (groups end where both sides end a token):")
    print(render_text(alignment, max_groups=24), flush=True)


def _train(trainer: Any, resume: str | None, output_dir: Path) -> None:
    """Trains and saves; a non-finite step, a bad checkpoint or an interruption (SIGINT, SIGTERM) ends in one line
    that names the last whole checkpoint."""

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
    except (NonFiniteError, CheckpointError, PeerFailure) as err:
        raise CommandError(f"gold train: {err}") from None
    except (DataError, RewardError, CompletionBytesError, ServerError, CacheError,
            EngineStartError) as err:  # met during training  # fmt: skip
        last = last_checkpoint(output_dir)
        where = f"the last whole checkpoint is {last}" if last else "no checkpoint saved"
        raise CommandError(f"gold train: at step {trainer.state.global_step + 1}: {err}; {where}") from None
    except KeyboardInterrupt as err:
        last = last_checkpoint(output_dir)
        where = f"the last whole checkpoint is {last}; continue with --resume latest" if last else "no checkpoint saved"
        say(f"gold train: interrupted ({str(err) or 'SIGINT'}) at step {trainer.state.global_step}; {where}",
            file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_eval(args: argparse.Namespace) -> int:
    if not args.student and not args.checkpoints and not args.teacher:
        raise CommandError("gold eval: name at least one model (--student, --checkpoints or --teacher)")
    if args.sample_student and not args.teacher:
        raise CommandError("gold eval: --sample-student scores the students' samples with the teacher: give --teacher")
    if args.plot and not args.checkpoints:
        raise CommandError("gold eval: --plot draws metrics against the training step: give --checkpoints")
    try:
        for path, flag in ((args.json, "--json"), (args.plot, "--plot")):
            if path is not None:
                writable_file(path, flag)  # before the scoring, not after it
        if args.plot is not None:
            eval_run.check_plot_path(args.plot)
        # a folder without whole checkpoints is named before the teacher loads; damaged checkpoints are skipped
        runs = [(run_dir, *eval_run.checkpoints(run_dir)) for run_dir in args.checkpoints]
        for spec in [*args.student, *([args.teacher] if args.teacher else [])]:
            if Path(spec).is_dir():
                check_model_folder(Path(spec))
                check_tokenizer_folder(Path(spec))
        read = read_rows(str(args.data), what="--data")
        rows, labels = read[: args.limit], read.labels[: args.limit]  # labels: file and line, as gold train's
        # every row checked before a model loads (with --sample-teacher, after: its completions are the teacher's)
        data = None if args.sample_teacher else eval_run.eval_set(rows, answer_field=args.answer_field, labels=labels)
        skipped = [note for _, _, notes in runs for note in notes]
        for note in skipped:
            say(f"gold eval: skipping checkpoint {note}", file=sys.stderr)
        if args.teacher:
            _progress("eval", f"loading the teacher {args.teacher}")
        teacher = eval_run.load_scored_model(args.teacher, dtype=args.dtype) if args.teacher else None
        if data is None:
            _progress("eval", f"sampling {args.sample_teacher} teacher completion(s) per prompt of {len(rows)} rows")
        data = data or eval_run.eval_set(rows, answer_field=args.answer_field, teacher=teacher, seed=args.seed,
                                         samples_per_prompt=args.sample_teacher, max_new_tokens=args.max_new_tokens,
                                         labels=labels)  # fmt: skip
        students = [(spec, None, spec) for spec in args.student]
        for run_dir, whole, _ in runs:
            students += [(str(path), step, f"{run_dir.name}@{step}") for step, path in whole]
        options = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                   "cache": eval_run.AgreementCache(), "stop_samples": args.stop_samples,
                   "student_samples": args.sample_student}  # fmt: skip
        scores = []
        sampled = f" (with {args.stop_samples} sample(s) per prompt)" if args.stop_samples else ""
        if teacher is not None:
            _progress("eval", f"scoring the teacher{sampled}")
            scores.append(eval_run.score_model(args.teacher, teacher, data, role="teacher", **options))
        for spec, step, name in students:
            _progress("eval", f"scoring {name}" + (f" (with {args.sample_student} of its own samples per prompt)"
                                                   if args.sample_student else sampled))  # fmt: skip
            model = eval_run.load_scored_model(spec, dtype=args.dtype)
            scores.append(eval_run.score_model(name, model, data, role="student", step=step, teacher=teacher,
                                               **options))  # fmt: skip
            say(f"gold eval: scored {name}", file=sys.stderr)
    except (RecipeError, DataError, ZooPackageMissing, ValueError, OSError) as err:
        raise CommandError(f"gold eval: {err}") from None
    say(f"{len(data.examples)} examples from {args.data} ({data.source})\n")
    say(eval_run.format_table(scores))
    if args.json:
        extra = {"data": str(args.data), "teacher": args.teacher, "skipped_checkpoints": skipped}
        eval_run.write_json(args.json, scores, data, extra)
        say(f"\nscores written to {args.json}")
    if args.plot:
        eval_run.plot_steps(args.plot, scores)
        say(f"plot written to {args.plot}")
    return 0


def _progress(command: str, text: str) -> None:
    """A ``gold <command>: <stage>`` line on stderr, so that a long stretch is not silent."""
    say(f"gold {command}: {text}", file=sys.stderr, flush=True)


def run_vllm_serve(args: argparse.Namespace) -> int:
    from gold.models.zoo import MODELS
    from gold.rollout.vllm_server import serve_command

    if args.model in MODELS:
        raise CommandError(f"gold vllm-serve: {args.model!r} is a zoo model shipped as GGUF; save it as a Hugging "
                         "Face folder (save_pretrained of model and tokenizer) and serve that folder")  # fmt: skip
    if not 0 < args.port < 65536:
        raise CommandError(f"gold vllm-serve: --port must be 1-65535, got {args.port}")
    extra = shlex.split(args.vllm_args)
    try:
        command, env = serve_command(args.model, host=args.host, port=args.port, dtype=args.dtype,
                                     max_model_len=args.max_model_len,
                                     gpu_memory_utilization=args.gpu_memory_utilization,
                                     tensor_parallel_size=args.tensor_parallel_size,
                                     enforce_eager=True if args.enforce_eager else None, extra=extra)  # fmt: skip
    except ImportError as err:
        raise CommandError(f"gold vllm-serve: {err}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"gold vllm-serve: listening on {args.host}: anyone who reaches this port can replace the model's "
            "weights (the reload endpoints are on); keep it on a trusted network", file=sys.stderr)  # fmt: skip
    say("gold vllm-serve: " + " ".join(command), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    os.execve(command[0], command, env)  # the server replaces this process: its pid is the server's


def run_alignment_demo(args: argparse.Namespace) -> int:
    say(f"gold demo: aligning {args.student} (student) with {args.teacher} (teacher) on a built-in sample\n")
    student, teacher = _load(args.student, "demo"), _load(args.teacher, "demo")
    alignments = [align_texts(student, teacher, text) for text in DEMO_TEXTS]
    fragments = []
    for index, alignment in enumerate(alignments):
        print(f"── sample {index + 1} ──")
        print(render_text(alignment, max_groups=40))
        print()
        fragments.append(render_html(alignment, title=f"sample {index + 1}",
                                     student_name=args.student, teacher_name=args.teacher))  # fmt: skip
    print("── all samples ──")
    print(format_stats(AlignmentStats.combine([a.stats for a in alignments])))
    vocab = VocabMap.build(student, teacher)
    raw = raw_string_overlap(student, teacher)
    print(
        f"\nvocabulary overlap: {vocab.num_text_matched} tokens on canonical bytes "
        f"({vocab.matched_fraction:.1%} of the student's), {raw} by raw piece strings"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    page = args.out / "alignment.html"
    page.write_text(html_page(fragments, title="gold demo alignment"), encoding="utf-8")
    say(f"HTML view written to {page}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Runs the parsed command; a refusal is printed as its one line (exit code 2)."""
    handlers = {"align": run_align, "demo": run_demo, "train": run_train, "eval": run_eval,
                "vllm-serve": run_vllm_serve, "teacher-cache": run_teacher_cache, "export": run_export}  # fmt: skip
    try:
        return handlers[args.command](args)
    except CommandError as err:
        print(err, file=sys.stderr)
        raise
