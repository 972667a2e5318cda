"""Arithmetic across digit splits: does pairing the same strings in shifted groups (``loss.shifted_matching``) help?

    python -m benchmarks.bench_arithmetic [--seeds 2] [--steps 150] [--json OUT]

A tiny teacher with the Llama-3 tokenizer (numbers up to 999 are one token) is fitted to two-digit addition
("What is 37 + 45?" → "82."); a student with the Qwen2.5 tokenizer (one token per digit) is distilled from the
teacher's samples, from the same random start, on the same batches, for the same steps, in three arms: gold's
hybrid with shifted matching, the same hybrid without it (the global vocabulary map in every group, as TRL's
hybrid does), and SFT on the same samples. In the answer's group the teacher writes ``82`` as one token and the
student ``8``·``2``: without shifted matching the student's ``2`` after ``8`` (the string ``82``) is paired with
the teacher's ``2`` (the string ``2``). Held out: sums of pairs never trained on. Reported per arm: KL(teacher‖
student) per byte on held-out teacher samples, exact-match accuracy (greedy), mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback

from gold.cli.demo_task import Prompt, accuracy, fit_to_task, teacher_examples
from gold.config import LossConfig, RolloutConfig
from gold.evaluation.bits_per_byte import distillation_gap
from gold.models.build import tiny_model
from gold.models.zoo import load_tokenizer
from gold.training.baselines import SequenceKDTrainer
from gold.training.trainer import GoldTrainer

ARMS = ("gold hybrid, shifted matching", "gold hybrid, global map only", "SFT on teacher samples")


def addition_prompts(seed: int, held_out: int = 64) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) prompts over all pairs of two-digit numbers whose sum has two digits."""
    prompts = [Prompt("", f"What is {a} + {b}?\n", answer=f"{a + b}.") for a in range(10, 90) for b in range(10, 90)
               if a + b < 100]  # fmt: skip
    random.Random(seed).shuffle(prompts)
    return prompts[held_out:], prompts[:held_out]


def train_arm(arm: str, student: Any, teacher: Any, tokenizers: tuple[Any, Any], data: list[Any], *, steps: int,
              seed: int, out: Path) -> float:  # fmt: skip
    args = TrainingArguments(output_dir=str(out / arm.replace(" ", "_")), max_steps=steps,
                             per_device_train_batch_size=16, learning_rate=3e-3, logging_steps=10, report_to=[],
                             save_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True)  # fmt: skip
    trainer_cls = SequenceKDTrainer if arm.startswith("SFT") else GoldTrainer
    loss = LossConfig(beta=0.0, shifted_matching=arm == ARMS[0])
    trainer = trainer_cls(student, teacher, args=args, train_dataset=data, student_tokenizer=tokenizers[0],
                          teacher_tokenizer=tokenizers[1], loss=loss,
                          rollout=RolloutConfig(lmbda=0.0, max_completion_length=8))  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    shifted = [e["hybrid/shifted_groups"] for e in trainer.state.log_history if "hybrid/shifted_groups" in e]
    if shifted:
        print(f"    {arm}: shifted groups {statistics.mean(shifted):.1%} of groups", flush=True)
    return time.perf_counter() - start


def run_seed(seed: int, steps: int, teacher_steps: int, out: Path) -> dict[str, Any]:
    student_tok, teacher_tok = load_tokenizer("qwen2.5"), load_tokenizer("llama-3")
    train_prompts, held_prompts = addition_prompts(seed)
    teacher = tiny_model(teacher_tok, seed=seed + 1, hidden_size=128, layers=2)
    fit_to_task(teacher, teacher_tok, train_prompts, steps=teacher_steps, lr=3e-3, seed=seed, batch_size=64)
    result: dict[str, Any] = {"teacher_accuracy": accuracy(teacher, teacher_tok, held_prompts)}
    torch.manual_seed(seed)
    data = teacher_examples(teacher, teacher_tok, train_prompts, copies=max(1, -(-steps * 16 // len(train_prompts))))
    held_out = teacher_examples(teacher, teacher_tok, held_prompts, copies=4)
    start = tiny_model(student_tok, seed=seed + 2, hidden_size=128, layers=2).state_dict()
    for arm in ARMS:
        student = tiny_model(student_tok, seed=seed + 2, hidden_size=128, layers=2)
        student.load_state_dict(start)
        seconds = train_arm(arm, student, teacher, (student_tok, teacher_tok), data, steps=steps, seed=seed, out=out)
        gap = distillation_gap(student, student_tok, teacher, teacher_tok, held_out)
        result[arm] = {"kl_bits_per_byte": gap.kl_bits_per_byte, "accuracy": accuracy(student, student_tok,
                                                                                    held_prompts),
                       "seconds": seconds}  # fmt: skip
        print(f"  seed {seed} · {arm}: KL {gap.kl_bits_per_byte:.4f} bits/byte, accuracy "
              f"{result[arm]['accuracy']:.1%} ({seconds:.0f} s)", flush=True)  # fmt: skip
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ARMS:
        kl = [r[arm]["kl_bits_per_byte"] for r in runs]
        acc = [r[arm]["accuracy"] for r in runs]
        out[arm] = {"kl_mean": statistics.mean(kl), "kl_spread": (max(kl) - min(kl)) / 2,
                    "accuracy_mean": statistics.mean(acc), "accuracy_spread": (max(acc) - min(acc)) / 2}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150, help="student steps per arm (batch 16)")
    parser.add_argument("--teacher-steps", type=int, default=800, help="teacher fitting steps (batch 64)")
    parser.add_argument("--out", type=Path, default=Path("out/bench_arithmetic"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for seed in range(args.seeds):
        print(f"seed {seed}: fitting the teacher ({args.teacher_steps} steps), then {len(ARMS)} arms", flush=True)
        runs.append(run_seed(seed, args.steps, args.teacher_steps, args.out))
    table = summary(runs)
    print(f"\n{'arm':<34}{'KL(T‖S) bits/byte':>22}{'accuracy':>18}")
    for arm, row in table.items():
        print(f"{arm:<34}{row['kl_mean']:>14.4f} ± {row['kl_spread']:.4f}"
              f"{row['accuracy_mean']:>11.1%} ± {row['accuracy_spread']:.1%}")  # fmt: skip
    accuracies = ", ".join(f"{r['teacher_accuracy']:.1%}" for r in runs)
    print(f"teacher accuracy per seed: {accuracies}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": table, "steps": args.steps,
                                         "teacher_steps": args.teacher_steps}, indent=2), encoding="utf-8")  # fmt: skip


if __name__ == "__main__":
    main()
