"""Which loss makes the better student? The same start, data, batches, steps and seed for every arm.

    python -m benchmarks.bench_quality [--setting demo|real-pair] [--seeds 2] [--steps N] [--json OUT]

Arms (``ARMS``; ``real-pair`` adds on-policy λ 0.5, where the student is pretrained):

* SFT on the teacher's samples (cross-entropy; the baseline);
* ULD alone (sorted-probability L1 over the whole vocabularies);
* TRL-semantics hybrid: the hybrid with the vocabularies paired by identical piece strings, as TRL 1.16 pairs them
  (``loss.vocab_match: raw``, no shifted pairs): the one design difference from the next arm;
* gold hybrid (canonical-byte pairing, the default);
* gold hybrid + the span term; gold hybrid + the byte-marginal term.

Settings: ``demo`` is ``gold demo``'s task (a tiny teacher with Mistral's SentencePiece tokenizer fitted to animal
sounds; a random student with SmolLM2's byte-level BPE; off-policy, forward KL, as the demo trains); ``real-pair``
is Gemma-3-270M teaching SmolLM2-135M-Instruct (``examples/gemma3-270m_to_smollm2-135m.yaml``; about 10 minutes an
arm on 2 CPU cores). Every student is scored by ``gold eval``'s code (:func:`gold.evaluation.run.score_model`) on
held-out
prompts: KL(teacher‖student) per byte on teacher samples, bits per byte, next-byte agreement, the stop rate, task
accuracy (demo), and KL(student‖teacher) per byte on the student's own samples. Mean and half the range over seeds.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from benchmarks.recovery import format_recovery, recovery
from gold.cli.demo import DemoSettings
from gold.cli.demo_task import SOUNDS, fit_to_task, task_prompts, teacher_examples
from gold.config import LossConfig, RolloutConfig
from gold.evaluation.run import AgreementCache, ModelScore, eval_set, score_model
from gold.models.build import tiny_model
from gold.models.zoo import load_tokenizer
from gold.training.baselines import SequenceKDTrainer
from gold.training.trainer import GoldTrainer

RAW = {"vocab_match": "raw", "shifted_matching": False}
ARMS: dict[str, dict[str, Any]] = {
    "SFT on teacher samples": {"sft": True},
    "ULD alone": {"loss": {"hybrid_weight": 0.0, "uld_weight": 1.0}},
    "TRL-semantics hybrid (raw pairing)": {"loss": RAW},
    "gold hybrid (default)": {"loss": {}},
    "gold hybrid + span": {"loss": {"span_weight": 1.0}},
    "gold hybrid + byte marginal": {"loss": {"byte_marginal_weight": 1.0}},
}
# the defaults' other settings, each changed alone (run with --arms "NAME,NAME")
ABLATIONS: dict[str, dict[str, Any]] = {
    "gold hybrid β 0.5": {"loss": {"beta": 0.5}},
    "gold hybrid β 1": {"loss": {"beta": 1.0}},
    "gold hybrid fixed weights": {"loss": {"hybrid_weighting": "fixed"}},
    "gold hybrid no shifted pairs": {"loss": {"shifted_matching": False}},
    "gold hybrid temperature 2": {"loss": {"student_temperature": 2.0, "teacher_temperature": 2.0}},
}
ON_POLICY = {"gold hybrid on-policy (λ 0.5 β 0.5)": {"loss": {"beta": 0.5}, "lmbda": 0.5}}
# what might close the gap on the student's own text (issue 32): on-policy slices at other λ and β, the
# vocabulary-free terms at other weights, ULD's exact sort for the unmatched mass
REVERSE_GAP = {
    "on-policy λ 0.25 β 0.5": {"loss": {"beta": 0.5}, "lmbda": 0.25},
    "on-policy λ 0.25 β 1": {"loss": {"beta": 1.0}, "lmbda": 0.25},
    "on-policy λ 0.5 β 1": {"loss": {"beta": 1.0}, "lmbda": 0.5},
    "gold hybrid + span 0.3": {"loss": {"span_weight": 0.3}},
    "gold hybrid + byte marginal 0.3": {"loss": {"byte_marginal_weight": 0.3}},
    "gold hybrid exact ULD sort": {"loss": {"uld_method": "exact"}},
    "gold hybrid + span 0.6": {"loss": {"span_weight": 0.6}},
    "gold hybrid + byte marginal 0.6": {"loss": {"byte_marginal_weight": 0.6}},
    "gold hybrid + span 0.3 + byte marginal 0.3": {"loss": {"span_weight": 0.3, "byte_marginal_weight": 0.3}},
    "gold hybrid + projection 0.3": {"loss": {"projection_weight": 0.3}},
    "gold hybrid + projection 1": {"loss": {"projection_weight": 1.0}},
    "gold hybrid + projection 3": {"loss": {"projection_weight": 3.0}},
}
CONTROL = "demo-control"
# the two arms recovery compares: SFT's gap to distillation's, across tokenizers and on one tokenizer
RECOVERY_ARMS = ("SFT on teacher samples", "gold hybrid (default)")
METRICS = ("kl_bits_per_byte", "bits_per_byte", "next_byte_agreement", "stop_rate", "accuracy",
           "reverse_kl_bits_per_byte")  # fmt: skip


@dataclass
class Setting:
    """Everything but the arm: tokenizers, teacher, data, start, scoring set."""

    student_tok: Any
    teacher: tuple[Any, Any]
    train: list[Any]
    held_out: Any
    start: dict[str, torch.Tensor]
    build_student: Any
    args: dict[str, Any]
    beta: float
    max_new_tokens: int


def demo_setting(seed: int, steps: int, copies: int | None = None, student: str | None = None) -> Setting:
    """``gold demo``'s task; ``student``: the student's tokenizer (default the demo's, SmolLM2; the control gives it
    the teacher's, Mistral-v1), everything else the same: teacher, samples, held-out set, batches, seeds."""
    demo = DemoSettings(seed=seed, steps=steps)
    student_tok = load_tokenizer(student or demo.student)
    teacher, teacher_tok, train, held_out = _demo_teacher(seed, steps, copies)
    start = tiny_model(student_tok, seed=seed + 2).state_dict()
    args = {"per_device_train_batch_size": demo.batch_size, "learning_rate": demo.lr, "max_steps": steps}
    return Setting(student_tok, (teacher, teacher_tok), train, held_out, start,
                   lambda: tiny_model(student_tok, seed=seed + 2), args, demo.beta, 16)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _demo_teacher(seed: int, steps: int, copies: int | None) -> tuple[Any, Any, list[Any], Any]:
    """The demo's fitted teacher, its training samples and the held-out set: shared by a seed's two settings."""
    demo = DemoSettings(seed=seed, steps=steps)
    teacher_tok = load_tokenizer(demo.teacher)
    train_prompts, held_prompts = task_prompts()
    torch.manual_seed(seed)
    teacher = tiny_model(teacher_tok, seed=seed + 1)
    fit_to_task(teacher, teacher_tok, train_prompts, steps=demo.teacher_steps, lr=demo.teacher_lr, seed=seed,
                progress="teacher fit")  # fmt: skip
    copies = copies or -(-steps * demo.batch_size // len(train_prompts))  # default: every sample seen once
    train = teacher_examples(teacher, teacher_tok, train_prompts, copies=copies)
    rows = [{"prompt": p.text, "completion": e.completion, "ended": e.ended, "answer": SOUNDS[p.animal]}
            for p in held_prompts for e in teacher_examples(teacher, teacher_tok, [p], copies=4)]  # fmt: skip
    return teacher, teacher_tok, train, eval_set(rows, answer_field="answer")


def real_pair_setting(seed: int, steps: int) -> Setting:
    from gold.cli.recipe import load_recipe
    from gold.cli.run import build_trainer
    from gold.data.files import read_rows
    from gold.evaluation.run import load_scored_model

    config = load_recipe("examples/gemma3-270m_to_smollm2-135m.yaml", [f"training.seed={seed}"])
    probe = build_trainer(config)  # the recipe's models and data, built once
    student_tok = probe.student_tokenizer
    start = {k: v.detach().clone() for k, v in probe.model.state_dict().items()}
    teacher = load_scored_model("gemma-3-270m")
    held_out = eval_set(read_rows("examples/data/real_pair_heldout.jsonl"))
    own = ("output_dir", "report_to", "save_steps", "save_only_model", "logging_steps", "seed", "use_cpu", "max_steps")
    args = {k: v for k, v in config.training.items() if k not in own}  # the recipe's optimisation settings
    args["max_steps"] = steps
    train = list(probe.train_dataset)
    del probe  # its teacher: the scoring one below also teaches
    return Setting(student_tok, teacher, train, held_out, start, lambda: load_scored_model("smollm2-135m-instruct")[0],
                   args, config.loss.beta, 48)  # fmt: skip


def train_arm(setting: Setting, arm: dict[str, Any], seed: int, out: Path) -> tuple[Any, float]:
    student = setting.build_student()
    student.load_state_dict(setting.start)
    args = TrainingArguments(output_dir=str(out), logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
                             seed=seed, disable_tqdm=True, **setting.args)  # fmt: skip
    trainer_cls = SequenceKDTrainer if arm.get("sft") else GoldTrainer
    loss = LossConfig(**{"beta": setting.beta, **arm.get("loss", {})})
    rollout = RolloutConfig(lmbda=arm.get("lmbda", 0.0), max_completion_length=setting.max_new_tokens, temperature=1.0)
    trainer = trainer_cls(student, setting.teacher[0], args=args, train_dataset=setting.train,
                          student_tokenizer=setting.student_tok, teacher_tokenizer=setting.teacher[1], loss=loss,
                          rollout=rollout)  # fmt: skip
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    started = time.perf_counter()
    trainer.train()
    return student.eval(), time.perf_counter() - started


def run_seed(setting_name: str, seed: int, steps: int, arms: dict[str, dict[str, Any]], out: Path,
             copies: int | None = None) -> dict[str, Any]:  # fmt: skip
    if setting_name == "real-pair":
        setting = real_pair_setting(seed, steps)
    else:  # demo, or its same-tokenizer control: the student on the teacher's tokenizer
        setting = demo_setting(seed, steps, copies, DemoSettings.teacher if setting_name == CONTROL else None)
    cache = AgreementCache()
    options = {"teacher": setting.teacher, "cache": cache, "max_new_tokens": setting.max_new_tokens, "seed": seed,
               "student_samples": 4}  # fmt: skip
    start = setting.build_student()
    start.load_state_dict(setting.start)
    result = {"start": asdict(score_model("start", (start.eval(), setting.student_tok), setting.held_out,
                                          role="student", **options))}  # fmt: skip
    for name, arm in arms.items():
        student, seconds = train_arm(setting, arm, seed, out / f"seed{seed}" / name.split(" (")[0].replace(" ", "_"))
        score: ModelScore = score_model(name, (student, setting.student_tok), setting.held_out, role="student",
                                        **options)  # fmt: skip
        result[name] = {**asdict(score), "train_seconds": seconds}
        print(f"  seed {seed} · {name}: KL {score.kl_bits_per_byte:.4f} b/B, acc {score.accuracy}, "
              f"KL(S‖T) own {score.reverse_kl_bits_per_byte:.4f}, {seconds:.0f} s", flush=True)  # fmt: skip
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and half the range over seeds of each metric of each arm."""
    table: dict[str, dict[str, float]] = {}
    for name in runs[0]:
        row = {}
        for metric in (*METRICS, "train_seconds"):
            values = [r[name].get(metric) for r in runs]
            if all(v is not None for v in values):
                row[metric] = statistics.mean(values)
                row[f"{metric}_spread"] = (max(values) - min(values)) / 2
        table[name] = row
    return table


def format_summary(table: dict[str, dict[str, float]], seconds: str = "s", digits: int = 0) -> str:
    """The summary as a text table; ``seconds`` heads the last column (``train_seconds``, ``digits`` decimals)."""
    head = f"{'arm':<40}{'KL(T‖S) b/B':>18}{'bits/B':>8}{'agree':>7}{'acc':>12}{'stop':>7}{'KL(S‖T) own':>18}"
    head += f"{seconds:>8}"
    lines = [head]
    for name, row in table.items():
        acc = f"{row['accuracy']:.0%}±{row['accuracy_spread']:.0%}" if "accuracy" in row else "—"
        lines.append(f"{name:<40}{row['kl_bits_per_byte']:>10.3f}±{row['kl_bits_per_byte_spread']:.3f}"
                     f"{row['bits_per_byte']:>8.3f}{row['next_byte_agreement']:>7.1%}{acc:>12}{row['stop_rate']:>7.0%}"
                     f"{row['reverse_kl_bits_per_byte']:>10.3f}±{row['reverse_kl_bits_per_byte_spread']:.3f}"
                     f"{row.get('train_seconds', 0):>8.{digits}f}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["demo", CONTROL, "real-pair"], default="demo")
    parser.add_argument("--control", action="store_true", help="demo: run the same-tokenizer control too (the student "
                        "on the teacher's tokenizer) and print recovery")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed … first-seed + seeds - 1 (to "
                        "add a seed to an earlier run)")  # fmt: skip
    parser.add_argument("--steps", type=int, help="student steps per arm (default: the setting's own)")
    parser.add_argument("--arms", help="arm names to run, separated by commas (default: the setting's ARMS)")
    parser.add_argument("--copies", type=int, help="demo: teacher samples per training prompt (default: enough that "
                        "no sample is seen twice); fewer makes the data scarce")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("out/bench_quality"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    arms = _chosen_arms(parser, args)
    if args.control and (args.setting != "demo" or not set(RECOVERY_ARMS) <= set(arms)):
        parser.error(f"--control runs with --setting demo and needs the arms {', '.join(RECOVERY_ARMS)}")
    steps = args.steps or (DemoSettings.steps if args.setting != "real-pair" else 32)
    settings = [args.setting, *([CONTROL] if args.control else [])]
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in settings:
            print(f"seed {seed}: {name}, {steps} steps, {len(arms)} arms", flush=True)
            runs[name].append(run_seed(name, seed, steps, arms, args.out / name, args.copies))
    payload: dict[str, Any] = {"steps": steps, "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
                               "copies": args.copies}  # fmt: skip
    for name in settings:
        payload[name] = {"runs": runs[name], "summary": summary(runs[name])}
        print(f"\n{name}\n" + format_summary(payload[name]["summary"]))
    if args.control:
        payload["recovery"] = recovery(runs["demo"], runs[CONTROL], *RECOVERY_ARMS)
        print("\nrecovery (across tokenizers ÷ same tokenizer)\n" + format_recovery(payload["recovery"]))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _chosen_arms(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if not args.arms:
        return {**ARMS, **(ON_POLICY if args.setting == "real-pair" else {})}
    known = {**ARMS, **ON_POLICY, **ABLATIONS, **REVERSE_GAP}
    chosen = args.arms.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {', '.join(known)}")
    return {name: known[name] for name in chosen}


if __name__ == "__main__":
    main()
