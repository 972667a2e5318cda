"""Real cross-family distillation on CPU: Gemma-3-270M teaches SmolLM2-135M-Instruct for a few steps (slow).

The recipe of ``examples/`` with real weights, shortened: a few SGD steps on four held-out teacher samples
must lower the student's KL per byte to the teacher on exactly those samples (a loss that pointed the
wrong way, or a silent NaN, fails here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gold.cli.recipe import load_recipe
from gold.cli.run import build_trainer
from gold.data.examples import Example
from gold.evaluation.agreement import group_agreement

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ROOT / "examples" / "gemma3-270m_to_smollm2-135m.yaml"
HELD_OUT = ROOT / "examples" / "data" / "real_pair_heldout.jsonl"


@pytest.mark.slow
def test_real_pair_steps_lower_the_kl_per_byte(tmp_path) -> None:
    rows = [json.loads(line) for line in HELD_OUT.read_text(encoding="utf-8").splitlines()[:4]]
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    overrides = [f"data.path={data}", f"training.output_dir={tmp_path / 'run'}", "training.max_steps=3",
                 "training.per_device_train_batch_size=4", "training.learning_rate=5e-5", "training.save_strategy='no'",
                 "training.report_to=[]", "training.disable_tqdm=true", "training.logging_steps=1",
                 "rollout.max_completion_length=32"]  # fmt: skip
    trainer = build_trainer(load_recipe(RECIPE, overrides))
    examples = [Example(r["prompt"], r["completion"]) for r in rows]
    student, teacher = trainer.model, trainer.teacher.model
    student_tok, teacher_tok = trainer.student_tokenizer, trainer.teacher.tokenizer
    before = group_agreement(student, student_tok, teacher, teacher_tok, examples)
    trainer.train()
    after = group_agreement(student, student_tok, teacher, teacher_tok, examples)
    losses = [entry["loss/hybrid"] for entry in trainer.state.log_history if "loss/hybrid" in entry]
    assert losses and all(math.isfinite(v) for v in losses)
    assert after.kl_bits_per_byte < before.kl_bits_per_byte - 0.01, (before, after)
    assert before.num_groups > 100
