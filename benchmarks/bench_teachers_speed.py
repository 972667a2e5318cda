"""Several teachers vs one: seconds per optimizer step of GoldTrainer on the same rows, in one run (issue 31, item 5).

    python -m benchmarks.bench_teachers_speed [--rows 8] [--steps 6] [--lmbda 0] [--repeats 3] [--json OUT]

Student: a tiny random Llama (hidden 64, 2 layers) on SmolLM2's tokenizer (49,152 ids). Teachers: the same size on
Mistral-v1's SentencePiece (32,000 ids) and on Qwen2.5's byte BPE (151,665 ids). Arms, each ``--steps`` optimizer
steps of ``--rows`` rows (dataset completions at ``--lmbda`` 0, student rollouts at 1), median of the steps after the
first; the arms run in turn ``--repeats`` times and each keeps its fastest median (on a shared 2-core machine the
first arm of a process and any arm beside another job run slower):

* ``mistral`` / ``qwen``: one teacher on every row (``teacher=``);
* ``routed``: both teachers, half the rows each (``teachers=`` and each row's ``teacher_id``);
* ``mixed``: both teachers on every row (``teacher_weights`` 0.5 / 0.5): twice the (student, teacher) pairs.

``routed / one teacher`` compares the routed step with the mean of the two one-teacher steps, the cost it would have
if splitting a slice by teacher were free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gold.config import RolloutConfig  # noqa: E402
from gold.models.build import tiny_model  # noqa: E402
from gold.models.zoo import load_tokenizer  # noqa: E402
from gold.training.trainer import GoldTrainer  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank, then rests under an old oak tree."
TEACHERS = {"mistral": "mistral-v1", "qwen": "qwen2.5"}


class StepClock(TrainerCallback):
    """Wall time between consecutive optimizer steps."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.marks:
            self.marks.append(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.append(time.perf_counter())

    def median_step(self) -> float:
        steps = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return statistics.median(steps[1:] if len(steps) > 1 else steps)


def rows(count: int) -> list[dict[str, Any]]:
    """Text rows with ~40-token completions, alternating teacher ids."""
    return [{"prompt": f"Story number {i}:\n", "completion": f" {SENTENCE[: 60 + 5 * (i % 5)]}",
             "teacher_id": list(TEACHERS)[i % 2]} for i in range(count)]  # fmt: skip


def run_arm(arm: str, data: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> float:
    student_tokenizer = load_tokenizer("smollm2")
    teachers = {t: (tiny_model(load_tokenizer(name), seed=1 + k), load_tokenizer(name))
                for k, (t, name) in enumerate(TEACHERS.items())}  # fmt: skip
    training = TrainingArguments(output_dir=str(out / arm), max_steps=args.steps, per_device_train_batch_size=args.rows,
                                 learning_rate=1e-4, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                                 disable_tqdm=True, logging_steps=args.steps)  # fmt: skip
    if arm in TEACHERS:
        shape: dict[str, Any] = {"teacher": teachers[arm][0], "teacher_tokenizer": teachers[arm][1]}
    else:
        shape = {"teachers": teachers, "teacher_weights": {t: 0.5 for t in TEACHERS} if arm == "mixed" else None}
    clock = StepClock()
    trainer = GoldTrainer(tiny_model(student_tokenizer, seed=0), args=training, train_dataset=data,
                          student_tokenizer=student_tokenizer, callbacks=[clock],
                          rollout=RolloutConfig(lmbda=args.lmbda, max_completion_length=48, temperature=1.0),
                          **shape)  # fmt: skip
    trainer.train()
    return clock.median_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--lmbda", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = rows(args.rows * args.steps)
    runs: dict[str, list[float]] = {arm: [] for arm in ("mistral", "qwen", "routed", "mixed")}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for arm in runs:
                runs[arm].append(run_arm(arm, data, args, Path(folder) / str(repeat)))
    seconds = {arm: min(values) for arm, values in runs.items()}
    one = (seconds["mistral"] + seconds["qwen"]) / 2
    result = {"step_s": seconds, "step_s_every_repeat": runs, "routed_vs_one_teacher": seconds["routed"] / one,
              "mixed_vs_one_teacher": seconds["mixed"] / one, "rows": args.rows, "steps": args.steps,
              "lmbda": args.lmbda, "repeats": args.repeats,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}  # fmt: skip
    for arm, value in seconds.items():
        print(f"{arm:8s} {value:.3f} s/step")
    print(f"routed / one teacher: {result['routed_vs_one_teacher']:.2f}×, mixed / one teacher: "
          f"{result['mixed_vs_one_teacher']:.2f}×")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
