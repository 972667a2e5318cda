"""The ``gold`` command line's arguments and its entry point: every subcommand's parser, from light imports only.

``gold --help``, ``gold <command> --help`` and a usage error answer from here, before torch or transformers import
(issue 30, item 4): :func:`main` imports the handlers (:mod:`gold.cli.commands`, which import the trainer) once the
arguments are known. Keep it so: nothing imported here may import torch, transformers or numpy
(``tests/gold/cli/test_speed.py`` times it).

gold train recipe.yaml rollout.lmbda=1.0 training.max_steps=50
gold eval --data held_out.jsonl --teacher gemma-3-270m --student smollm2-135m-instruct --checkpoints out/run
gold align --student qwen2.5 --teacher llama-3 "Some text"
gold align --student gemma-3 --teacher smollm2 --file notes.txt --html out.html
gold demo                    # cross-family distillation on 2 CPU cores, a few minutes
gold demo --alignment-only   # just the alignment of a built-in multilingual sample
gold demo --teachers 2       # two teachers of two tokenizer families distilled into one student, routed per row
gold vllm-serve out/student-start --port 8001   # a vLLM server for rollout.vllm_mode: server
gold export --merge out/lora/checkpoint-32 out/lora-merged   # a LoRA checkpoint as a plain model folder
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gold.cli.checks import OneLineParser, at_least
from gold.models.zoo import tokenizer_names
from gold.version import __version__

DEMO_STUDENT = "gemma-3"
DEMO_TEACHER = "smollm2"  # for --alignment-only


def main(argv: Sequence[str] | None = None) -> int:
    """The ``gold`` command: parses ``argv`` (``sys.argv[1:]`` when None), then runs the command."""
    args = build_parser().parse_args(argv)
    from gold.cli.commands import run_command  # the heavy imports, now that the arguments are known

    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``gold`` parser with all its subcommands."""
    parser = OneLineParser(prog="gold", description="Cross-tokenizer knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"gold-distill {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_align(commands)
    _add_demo(commands)
    _add_train(commands)
    _add_eval(commands)
    _add_vllm_serve(commands)
    _add_teacher_cache(commands)
    _add_export(commands)
    return parser


def _add_align(commands: Any) -> None:
    align = commands.add_parser("align", help="show how two tokenizers split the same bytes")
    names = ", ".join(tokenizer_names())
    align.add_argument("--student", required=True, help=f"zoo name ({names}) or a tokenizer directory")
    align.add_argument("--teacher", required=True, help="zoo name or a tokenizer directory")
    source = align.add_mutually_exclusive_group(required=True)
    source.add_argument("text", nargs="?", help="the text to align")
    source.add_argument("--file", type=Path, help="read the text from this UTF-8 file")
    align.add_argument("--html", type=Path, help="also write an HTML view to this file")
    align.add_argument("--max-groups", type=at_least(1), default=200, help="groups shown in the terminal table")


def _add_demo(commands: Any) -> None:
    demo_help = ("the embedded demo: distil a tiny teacher into a student of another tokenizer family, "
                 "compare with SFT, write plots and an HTML view")  # fmt: skip
    demo = commands.add_parser("demo", help=demo_help)
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    demo.add_argument("--steps", type=at_least(1), help="student training steps per run (default: the demo's, 300)")
    demo.add_argument("--alignment-only", action="store_true", help="only align two tokenizers on a built-in sample")
    demo.add_argument("--teachers", type=int, choices=(1, 2), default=1,
                      help="2: an animal-sounds teacher (Mistral tokenizer) and an addition teacher (Llama-3) "
                      "taught to one SmolLM2-tokenizer student, each row routed to its teacher")  # fmt: skip
    demo.add_argument("--student", default=DEMO_STUDENT, help="zoo tokenizer of the student (--alignment-only)")
    demo.add_argument("--teacher", default=DEMO_TEACHER, help="zoo tokenizer of the teacher (--alignment-only)")


def _add_train(commands: Any) -> None:
    train = commands.add_parser("train", help="distil as a YAML recipe says (runs under accelerate launch too)")
    train.add_argument("recipe", type=Path, help="YAML recipe (see examples/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. loss.beta=0.3")
    train.add_argument("--resume", help="checkpoint directory to resume from, or 'latest' in training.output_dir")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in training.output_dir (its checkpoints are deleted)",
    )


def _add_vllm_serve(commands: Any) -> None:
    serve = commands.add_parser("vllm-serve", help="start a vLLM server for student rollouts (rollout.vllm_mode: "
                                "server); runs until stopped")  # fmt: skip
    serve.add_argument("model", help="the student's starting weights: a Hugging Face model folder or hub id")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 lets other machines in, including to reload its weights",
    )
    serve.add_argument("--port", type=at_least(1), default=8001, help="port (rollout.vllm_server_port)")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    serve.add_argument("--max-model-len", type=at_least(2), help="context length (prompt + completion)")
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of GPU memory (CUDA)")
    serve.add_argument("--tensor-parallel-size", type=at_least(1), default=1)
    serve.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (always eager on CPU)")
    serve.add_argument("--dry-run", action="store_true", help="print the command and exit")
    serve.add_argument("--vllm-args", default="", help='more flags for vLLM\'s server, one string: "--seed 1"')


def _add_eval(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="bits per byte, teacher→student KL per byte and agreement")
    evaluate.add_argument("--data", type=Path, required=True,
                          help="held-out .jsonl/.json rows: prompt+completion, messages, or text")  # fmt: skip
    evaluate.add_argument("--student", action="append", default=[], help="zoo model or local folder (repeatable)")
    evaluate.add_argument("--teacher", help="zoo model or local folder; enables KL and agreement")
    evaluate.add_argument("--checkpoints", action="append", type=Path, default=[],
                          help="a training output_dir: score each checkpoint-N as a student (repeatable)")  # fmt: skip
    evaluate.add_argument("--sample-teacher", type=at_least(0), default=0, metavar="N",
                          help="score N teacher samples per prompt instead of the file's completions")  # fmt: skip
    evaluate.add_argument("--max-new-tokens", type=at_least(1), default=64,
                          help="length of teacher samples and answers")  # fmt: skip
    evaluate.add_argument("--answer-field", help="row field holding the answer: also report task accuracy")
    evaluate.add_argument("--limit", type=at_least(1), help="use only the first N rows")
    evaluate.add_argument("--batch-size", type=at_least(1), default=8)
    evaluate.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast models to this dtype")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of teacher sampling and stop-rate samples")
    evaluate.add_argument(
        "--sample-student",
        type=at_least(0),
        default=0,
        metavar="N",
        help="also score N samples per prompt of each student's own text with both models: KL(student‖teacher) per "
        "byte, the teacher's bits per byte of it, and the stop rate on them",
    )
    evaluate.add_argument(
        "--stop-samples",
        type=at_least(0),
        default=1,
        metavar="N",
        help="samples per prompt of each model for its stop rate (share that stops within --max-new-tokens); 0: skip",
    )
    evaluate.add_argument("--json", type=Path, help="write the scores as JSON here")
    evaluate.add_argument("--plot", type=Path, help="with --checkpoints: plot the metrics against the step here")


def _add_teacher_cache(commands: Any) -> None:
    cache = commands.add_parser("teacher-cache", help="teacher rows computed once, read by any student (teacher.cache)")
    actions = cache.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="teacher top-K rows for every completion of a recipe's data (resumable)")
    build.add_argument("recipe", type=Path, help="YAML recipe: its teacher (model or server_url) and data")
    build.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. teacher.top_k=64")
    build.add_argument("--out", type=Path, required=True, help="the cache folder (a rerun resumes it)")
    build.add_argument("--top-k", type=int, help="K per position (-1: every id; default: teacher.top_k)")
    build.add_argument("--batch-size", type=at_least(1), default=8, help="sequences per teacher call")
    build.add_argument(
        "--seq-kd-samples",
        type=at_least(0),
        default=0,
        metavar="N",
        help="also draw N teacher samples per prompt, once (rollout.seq_kd reads them), with their rows",
    )
    info = actions.add_parser("info", help="what a cache holds: teacher, K, sequences, bytes per token")
    info.add_argument("folder", type=Path)


def _add_export(commands: Any) -> None:
    export = commands.add_parser("export", help="write a LoRA checkpoint's merged weights as a plain model folder")
    export.add_argument("--merge", action="store_true", required=True, help="merge the adapter into the base weights")
    export.add_argument("checkpoint", type=Path, help="a checkpoint-N (or final) folder of a student.peft run")
    export.add_argument("out", type=Path, help="the new model folder (must not exist, or be empty)")
    export.add_argument("--base", help="the base model: zoo name or folder (default: the one the adapter records)")
