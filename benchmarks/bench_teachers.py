"""Several teachers of different tokenizer families teaching one student (issue 31, item 7), with baselines.

    python -m benchmarks.bench_teachers [--seeds 2] [--steps N] [--arms "A,B"] [--json OUT]

The task is :mod:`gold.cli.demo_teachers`'s: an animal-sounds teacher with Mistral's SentencePiece tokenizer, a
two-digit-addition teacher with Llama-3's byte BPE, one sample per training prompt from each, and a random student
with SmolLM2's tokenizer. Arms, from the same random start, same steps, batch size, learning rate and seed:

* routed gold: the union of both domains' rows, each row scored by its own teacher (``teachers=``);
* each single-teacher gold student, on its own domain's rows only (the reference on that domain). It trains for the
  same number of steps as the others, so it sees about twice as many rows of its domain as the routed student
  (which spends half its batches on the other domain): the stronger reference, hence a conservative target;
* SFT on the union of both teachers' samples (``SequenceKDTrainer``, same rows and batches as routed);
* mixing with equal weights: every row scored by both teachers (``teacher_weights``).

Every student is scored on each domain's held-out prompts: greedy exact-answer accuracy and KL(teacher‖student) per
byte on four teacher samples per prompt (``gold eval``'s code), mean and half the range over seeds. The issue's
target: routed ≥ 90 % of each single-teacher student's accuracy on that teacher's domain, and routed beats SFT on
the union on both domains by more than the seed spread (here: routed's mean minus SFT's, in the better direction,
exceeds the sum of both arms' half-ranges, so that no seed of one overlaps a seed of the other).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gold.cli import demo_teachers as task
from gold.evaluation.run import AgreementCache
from gold.models.build import tiny_model
from gold.models.zoo import load_tokenizer

METRICS = ("accuracy", "kl_bits_per_byte", "stop_rate")


def run_seed(settings: task.TeachersSettings, arms: list[str], out: Path) -> dict[str, Any]:
    """Fits the seed's two teachers (or loads them from ``out/teachers``), then trains and scores every arm from one
    random start."""
    started = time.perf_counter()
    domains = task.fit_domains(settings, cache=out / "teachers")
    result: dict[str, Any] = {
        "teacher_accuracy": {d: domain.teacher_accuracy for d, domain in domains.items()},
        "train_rows": {d: len(domain.train) for d, domain in domains.items()},
        "teacher_seconds": time.perf_counter() - started,
        "arms": {},
    }
    print(f"  seed {settings.seed}: teachers {result['teacher_accuracy']} held-out accuracy, rows "
          f"{result['train_rows']} ({result['teacher_seconds']:.0f} s)", flush=True)  # fmt: skip
    student_tok = load_tokenizer(settings.student)
    start = tiny_model(student_tok, seed=settings.seed + 2).state_dict()
    caches: dict[str, AgreementCache] = {}
    arm_scores = result["arms"]
    student = tiny_model(student_tok, seed=settings.seed + 2).eval()
    arm_scores["start"] = task.score_student(student, student_tok, domains, seed=settings.seed, caches=caches)
    for arm in arms:
        student = tiny_model(student_tok, seed=settings.seed + 2)
        student.load_state_dict(start)
        seconds = task.train_arm(arm, student, student_tok, domains, settings, out / f"seed{settings.seed}" / arm)
        arm_scores[arm] = {**task.score_student(student, student_tok, domains, seed=settings.seed, caches=caches),
                           "train_seconds": seconds}  # fmt: skip
        figures = ", ".join(f"{d} acc {s['accuracy']:.0%} KL {s['kl_bits_per_byte']:.3f}"
                            for d, s in arm_scores[arm].items() if d != "train_seconds")  # fmt: skip
        print(f"  seed {settings.seed} · {arm}: {figures} ({seconds:.0f} s)", flush=True)
    print(task.format_domains(arm_scores, domains), flush=True)
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm and domain: each metric's mean and half the range over seeds (and the arm's training seconds)."""
    table: dict[str, dict[str, Any]] = {}
    for arm, first in runs[0]["arms"].items():
        row: dict[str, Any] = {}
        for domain in (k for k in first if k != "train_seconds"):
            row[domain] = {}
            for metric in METRICS:
                values = [run["arms"][arm][domain][metric] for run in runs]
                row[domain][metric] = statistics.mean(values)
                row[domain][f"{metric}_spread"] = (max(values) - min(values)) / 2
        if "train_seconds" in first:
            row["train_seconds"] = statistics.mean(run["arms"][arm]["train_seconds"] for run in runs)
        table[arm] = row
    return table


def target(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per domain: routed accuracy ÷ the single-teacher student's, and routed's margins over SFT on the union (accuracy
    and KL, positive when routed is better) against the sum of the two arms' half-ranges."""
    out: dict[str, dict[str, Any]] = {}
    routed, sft = table.get(task.ROUTED), table.get(task.SFT_UNION)
    for domain, single_arm in task.SINGLE.items():
        row: dict[str, Any] = {}
        if routed is not None and single_arm in table:
            reference = table[single_arm][domain]["accuracy"]
            row["accuracy_ratio_to_single"] = routed[domain]["accuracy"] / reference if reference > 0 else None
            row["reached_90_percent"] = reference > 0 and routed[domain]["accuracy"] >= 0.9 * reference
        if routed is not None and sft is not None:
            for metric, sign in (("accuracy", 1.0), ("kl_bits_per_byte", -1.0)):
                margin = sign * (routed[domain][metric] - sft[domain][metric])
                spread = routed[domain][f"{metric}_spread"] + sft[domain][f"{metric}_spread"]
                row[f"{metric}_margin_over_sft"] = margin
                row[f"{metric}_beats_sft_beyond_spread"] = margin > spread
        out[domain] = row
    return out


def format_summary(table: dict[str, dict[str, Any]]) -> str:
    """The summary as a text table: per domain, accuracy and KL per byte with their half-ranges."""
    domains = [k for k in next(iter(table.values())) if k != "train_seconds"]
    head = f"{'arm':<32}" + "".join(f"{f'{d} acc':>16}{f'{d} KL b/B':>20}" for d in domains) + f"{'s':>6}"
    lines = [head]
    for arm, row in table.items():
        cells = "".join(_cell(row[d], "accuracy", ".1%", 16) + _cell(row[d], "kl_bits_per_byte", ".3f", 20)
                        for d in domains)  # fmt: skip
        lines.append(f"{arm:<32}{cells}{row.get('train_seconds', 0):>6.0f}")
    return "\n".join(lines)


def _cell(row: dict[str, float], metric: str, spec: str, width: int) -> str:
    text = f"{format(row[metric], spec)} ± {format(row[f'{metric}_spread'], spec)}"
    return f"{text:>{width}}"


def _combined(parser: argparse.ArgumentParser, paths: list[Path]) -> tuple[list[dict[str, Any]], list[str], int, float]:
    """The runs, arms, steps and learning rate of several ``--json`` files of one configuration (seeds apart); each
    run keeps its file's ``seconds`` as ``run_seconds``."""
    parts = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    settings = {json.dumps(part["settings"] | {"seed": 0}, sort_keys=True) for part in parts}
    if len(settings) != 1 or len({tuple(part["arms"]) for part in parts}) != 1:
        parser.error("--combine: the files differ in settings or arms; combine only runs of one configuration")
    runs = [run | {"run_seconds": part["seconds"]} for part in parts for run in part["runs"]]
    return runs, parts[0]["arms"], parts[0]["steps"], parts[0]["lr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST … FIRST + SEEDS - 1")
    parser.add_argument("--steps", type=int, default=task.TeachersSettings.steps, help="student steps per arm")
    parser.add_argument("--lr", type=float, default=task.TeachersSettings.lr, help="student learning rate")
    parser.add_argument("--arms", help=f"arms to run, separated by commas (default all: {', '.join(task.ARMS)})")
    parser.add_argument("--out", type=Path, default=Path("out/bench_teachers"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (1 is faster on a machine shared with other jobs)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: summarise the runs of these --json files together")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.combine:
        runs, arms, args.steps, args.lr = _combined(parser, args.combine)
    else:
        arms = args.arms.split(",") if args.arms else list(task.ARMS)
        unknown = [arm for arm in arms if arm not in task.ARMS]
        if unknown:
            parser.error(f"unknown arms {unknown}; known: {', '.join(task.ARMS)}")
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            print(f"seed {seed}: two teachers, {len(arms)} arms of {args.steps} steps", flush=True)
            settings_of_seed = task.TeachersSettings(seed=seed, steps=args.steps, lr=args.lr)
            runs.append({"seed": seed, **run_seed(settings_of_seed, arms, args.out)})
    table = summary(runs)
    checks = target(table)
    print(f"\nmean ± half the range over {len(runs)} seed(s)\n{format_summary(table)}")
    print(json.dumps(checks, indent=2))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        payload = {"steps": args.steps, "lr": args.lr, "seeds": len(runs), "arms": arms,
                   "settings": asdict(task.TeachersSettings(steps=args.steps, lr=args.lr)), "runs": runs,
                   "summary": table, "target": checks, "seconds": time.perf_counter() - started}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
