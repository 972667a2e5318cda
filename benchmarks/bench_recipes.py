"""Which on-policy recipe? GKD hybrid vs OPD-RL (teacher only) vs OPD-RL + task reward vs reward-only GRPO.

    python -m benchmarks.bench_recipes [--seeds 2] [--warm-steps 250] [--steps 40] [--json OUT]

The demo task (``gold demo``: a tiny Mistral-tokenized teacher fitted to animal sounds, a SmolLM2-tokenized student).
On-policy recipes need a student that sometimes answers (a random one never names a sound, so a task reward has no
variance and GRPO no signal): every arm starts from the same *warm* student, the demo's start after
``--warm-steps`` of SFT on the teacher's samples, and then trains ``--steps`` more steps with the same seed and the
same prompts per step. Arms (``RECIPES``):

* SFT on teacher samples, continued (the baseline the others must beat);
* GKD hybrid on the student's rollouts (``lmbda`` 1, the divergence as the loss);
* OPD-RL, teacher only: the policy gradient with the teacher's group log-ratio as the advantage (``opd_weight`` 1,
  no divergence term);
* OPD-RL + task reward: GRPO's group-normalised advantage of "names the sound" plus the teacher's log-ratio;
* reward-only GRPO: the task reward alone (``opd_alpha`` 0), no teacher in the gradient.

Every on-policy arm samples ``num_generations`` 4 completions per prompt. Held-out figures come from ``gold eval``'s
code (:func:`gold.evaluation.run.score_model`): task accuracy (greedy), KL(teacher‖student) per byte on teacher samples,
KL(student‖teacher) per byte on the student's own samples; plus seconds per step. Mean and half the range over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from benchmarks.bench_quality import Setting, demo_setting, format_summary, summary
from examples.rewards import names_the_sound
from gold.cli.demo_task import SOUNDS, sample_answers, task_prompts
from gold.config import LossConfig, RolloutConfig
from gold.evaluation.run import AgreementCache, score_model
from gold.training.baselines import SequenceKDTrainer
from gold.training.trainer import GoldTrainer

OPD = {"hybrid_weight": 0.0, "opd_weight": 1.0}
RECIPES: dict[str, dict[str, Any]] = {
    "SFT on teacher samples (continued)": {"sft": True},
    "GKD hybrid on-policy": {"loss": {}, "on_policy": True},
    "OPD-RL teacher only": {"loss": OPD, "on_policy": True},
    "OPD-RL + task reward": {"loss": {**OPD, "opd_alpha": 1.0}, "on_policy": True, "reward": True},
    "reward-only GRPO": {"loss": {**OPD, "opd_alpha": 0.0}, "on_policy": True, "reward": True},
}
# the policy-gradient arms at a tenth of the demo's learning rate (run them with --arms; names hold no commas)
LOW_LR = {f"{name} at lr/10": {**arm, "lr_scale": 0.1} for name, arm in RECIPES.items()
          if arm.get("loss", {}).get("opd_weight")}  # fmt: skip
GENERATIONS = 4


def with_answers(setting: Setting) -> list[Any]:
    """The training examples with their prompt's sound as the ``answer`` column (the reward reads it)."""
    sound = {p.text: SOUNDS[p.animal] for p in task_prompts()[0]}
    return [dataclasses.replace(e, fields={"answer": sound[e.prompt]}) for e in setting.train]


def train(setting: Setting, arm: dict[str, Any], start: dict[str, Any], seed: int, steps: int, out: Path,
          ) -> tuple[Any, float]:  # fmt: skip
    """One arm from ``start``; returns the student and its seconds per step."""
    student = setting.build_student()
    student.load_state_dict(start)
    args = TrainingArguments(output_dir=str(out), logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
                             seed=seed, disable_tqdm=True, **{**setting.args, "max_steps": steps,
                             "learning_rate": setting.args["learning_rate"] * arm.get("lr_scale", 1.0)})  # fmt: skip
    on_policy = arm.get("on_policy", False)
    rollout = RolloutConfig(lmbda=1.0 if on_policy else 0.0, num_generations=GENERATIONS if on_policy else 1,
                            max_completion_length=setting.max_new_tokens, temperature=1.0)  # fmt: skip
    trainer_cls = SequenceKDTrainer if arm.get("sft") else GoldTrainer
    extra = {"reward_funcs": [names_the_sound]} if arm.get("reward") else {}
    trainer = trainer_cls(student, setting.teacher[0], args=args, train_dataset=with_answers(setting),
                          student_tokenizer=setting.student_tok, teacher_tokenizer=setting.teacher[1],
                          loss=LossConfig(**{"beta": setting.beta, **arm.get("loss", {})}), rollout=rollout,
                          **extra)  # fmt: skip
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    started = time.perf_counter()
    trainer.train()
    return student.eval(), (time.perf_counter() - started) / steps


def run_seed(seed: int, warm_steps: int, steps: int, arms: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    print(f"  seed {seed}: fitting the teacher, sampling its completions", flush=True)
    setting = demo_setting(seed, warm_steps)
    print(f"  seed {seed}: warm start, {warm_steps} SFT steps on the teacher's samples", flush=True)
    options = {"teacher": setting.teacher, "cache": AgreementCache(), "max_new_tokens": setting.max_new_tokens,
               "seed": seed, "student_samples": 4}  # fmt: skip
    warm, _ = train(setting, RECIPES["SFT on teacher samples (continued)"], setting.start, seed, warm_steps,
                    out / f"seed{seed}" / "warm")  # fmt: skip
    warm_state = {k: v.detach().clone() for k, v in warm.state_dict().items()}
    result = {"warm start": asdict(score_model("warm start", (warm, setting.student_tok), setting.held_out,
                                               role="student", **options))}  # fmt: skip
    for name, arm in arms.items():
        print(f"  seed {seed} · {name}: {steps} steps from the warm start", flush=True)
        student, per_step = train(setting, arm, warm_state, seed, steps, out / f"seed{seed}" / name.replace(" ", "_"))
        score = score_model(name, (student, setting.student_tok), setting.held_out, role="student", **options)
        result[name] = {**asdict(score), "train_seconds": per_step}
        print(f"  seed {seed} · {name}: acc {score.accuracy:.0%}, KL {score.kl_bits_per_byte:.4f} b/B, "
              f"KL(S‖T) own {score.reverse_kl_bits_per_byte:.4f}, {per_step:.2f} s/step", flush=True)  # fmt: skip
        print(f"    greedy answers: {greedy_answers(student, setting)}", flush=True)
    return result


def greedy_answers(model: Any, setting: Setting, count: int = 8) -> str:
    """What the student answers (greedy) to the first ``count`` held-out prompts: ``animal: answer`` pairs."""
    prompts = task_prompts()[1][:count]
    answers = sample_answers(model, setting.student_tok, prompts, temperature=0.0)
    return "; ".join(f"{p.animal}: {a}" for p, a in zip(prompts, answers, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--warm-steps", type=int, default=250, help="SFT steps that make the common start")
    parser.add_argument("--steps", type=int, default=40, help="steps of each arm from the warm start")
    parser.add_argument("--arms", help="arm names to run, separated by commas (default: all of RECIPES)")
    parser.add_argument("--out", type=Path, default=Path("out/bench_recipes"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    arms = RECIPES
    if args.arms:
        known = {**RECIPES, **LOW_LR}
        unknown = [name for name in args.arms.split(",") if name not in known]
        if unknown:
            parser.error(f"unknown arms {unknown}; known: {', '.join(known)}")
        arms = {name: known[name] for name in args.arms.split(",")}
    started = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        print(f"seed {seed}: {args.warm_steps} warm SFT steps, then {args.steps} steps, {len(arms)} arms", flush=True)
        runs.append(run_seed(seed, args.warm_steps, args.steps, arms, args.out))
    table = summary(runs)
    print("\n" + format_summary(table, seconds="s/step", digits=2))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        payload = {"warm_steps": args.warm_steps, "steps": args.steps, "seeds": args.seeds,
                   "num_generations": GENERATIONS, "runs": runs, "summary": table}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
