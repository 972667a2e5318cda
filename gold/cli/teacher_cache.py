"""``gold teacher-cache build | info``: the command line of :mod:`gold.teacher.cache`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gold.cli.checks import CommandError, at_least, writable_dir
from gold.data.examples import DataError
from gold.cli.recipe import RecipeError, load_recipe
from gold.teacher.build import build_cache
from gold.teacher.cache import TeacherCache
from gold.models.zoo import ZooPackageMissing


def add_teacher_cache(commands: Any) -> None:
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


def run_teacher_cache(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            writable_dir(args.out, "--out")
            cache = build_cache(load_recipe(args.recipe, args.overrides), args.out, top_k=args.top_k,
                                batch_size=args.batch_size, seq_kd_samples=args.seq_kd_samples)  # fmt: skip
        else:
            cache = TeacherCache(args.folder)
    except (RecipeError, DataError, ZooPackageMissing, ValueError, ImportError, OSError, RuntimeError) as err:
        raise CommandError(f"gold teacher-cache {args.action}: {err}") from None
    tokens = cache.tokens()
    print(f"teacher cache {cache.folder}: {len(cache)} sequences, {tokens} completion tokens, K={cache.info.top_k}, "
          f"teacher {cache.info.teacher}, {cache.size_bytes() / max(tokens, 1):.0f} bytes per token")  # fmt: skip
    return 0
