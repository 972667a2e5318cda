"""python -m benchmarks.real_pair_directions [--seed 0] [--json OUT]  (about 30 minutes on 2 CPU cores; offline)

The real pair (Gemma-3-270M teaches SmolLM2-135M-Instruct, `examples/gemma3-270m_to_smollm2-135m.yaml`) in
both directions: the same start, data, batches, steps and seed for every arm —

* SFT on the teacher's samples (the baseline: cross-entropy, the end token included);
* gold off-policy: hybrid, β = 0, λ = 0 (the shipped recipe);
* gold on-policy: hybrid, β = 0.5, λ = 0.5 (half the slices are student rollouts).

Each student (and the start) is scored by ``gold eval``'s code on the held-out topics: KL(teacher‖student) per
byte on the 32 held-out teacher samples (what SFT optimises directly), and on 4 samples per held-out prompt of
the student's *own* text, KL(student‖teacher) per byte and the teacher's bits per byte of it, plus the stop rate.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from gold.cli.recipe import load_recipe
from gold.cli.run import build_trainer
from gold.data.files import read_rows
from gold.evaluation.run import AgreementCache, eval_set, format_table, load_scored_model, score_model
from gold.training.baselines import SequenceKDTrainer
from gold.training.trainer import GoldTrainer

RECIPE = "examples/gemma3-270m_to_smollm2-135m.yaml"
HELD_OUT = "examples/data/real_pair_heldout.jsonl"
ARMS = {
    "SFT on teacher samples": (SequenceKDTrainer, []),
    "gold off-policy (hybrid β 0, λ 0)": (GoldTrainer, ["loss.beta=0.0", "rollout.lmbda=0.0"]),
    "gold on-policy (hybrid β 0.5, λ 0.5)": (GoldTrainer, ["loss.beta=0.5", "rollout.lmbda=0.5"]),
}


def train_arm(name: str, trainer_cls: type[GoldTrainer], overrides: list[str], out: Path, seed: int) -> Path:
    folder = out / name.split(" (")[0].replace(" ", "_")
    config = load_recipe(RECIPE, [*overrides, f"training.output_dir={folder}", f"training.seed={seed}",
                                  "training.save_strategy='no'", "training.report_to=[]"])  # fmt: skip
    trainer = build_trainer(config, trainer_cls=trainer_cls)
    trainer.train()
    trainer.save_model()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/real_pair_directions"))
    parser.add_argument("--student-samples", type=int, default=4, help="student samples per held-out prompt")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    students = {"start": "smollm2-135m-instruct"}
    for name, (trainer_cls, overrides) in ARMS.items():
        started = time.perf_counter()
        students[name] = str(train_arm(name, trainer_cls, overrides, args.out / f"seed{args.seed}", args.seed))
        seconds[name] = time.perf_counter() - started
    teacher = load_scored_model("gemma-3-270m")
    data = eval_set(read_rows(HELD_OUT))
    cache = AgreementCache()
    options = {"teacher": teacher, "cache": cache, "max_new_tokens": 48, "seed": args.seed,
               "student_samples": args.student_samples}  # fmt: skip
    scores = [score_model("teacher gemma-3-270m", teacher, data, role="teacher", max_new_tokens=48, seed=args.seed,
                          stop_samples=args.student_samples)]  # fmt: skip
    for name, spec in students.items():
        scores.append(score_model(name, load_scored_model(spec), data, role="student", **options))
    print(format_table(scores))
    print({name: f"{s:.0f} s" for name, s in seconds.items()})
    if args.json:
        payload = {"seed": args.seed, "train_seconds": seconds, "scores": [asdict(s) for s in scores]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
