"""The embedded demo, shortened: it runs end to end, writes its files and judges gold honestly."""

from __future__ import annotations

import json
import sys

import pytest

from gold.cli.demo import DemoSettings, run_demo
from gold.cli.demo_task import SOUNDS, is_correct, task_prompts


def test_task_holds_out_a_question_form_per_animal() -> None:
    train, held_out = task_prompts()
    assert len(held_out) == len(SOUNDS) and len(train) == 3 * len(SOUNDS)
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert {p.animal for p in held_out} == set(SOUNDS)
    assert is_correct(held_out[0], f"It says {SOUNDS[held_out[0].animal]}.")


@pytest.mark.slow
def test_short_demo_writes_its_outputs(tmp_path, capsys) -> None:
    code = run_demo(tmp_path, DemoSettings(teacher_steps=30, steps=10, batch_size=8))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert code == (0 if metrics["gold_improved"] else 1)
    scores = metrics["scores"]
    assert set(scores) == {"before", "gold (hybrid, β=0, λ=0)", "SFT on teacher samples"}
    assert scores["gold (hybrid, β=0, λ=0)"]["kl_bits_per_byte"] < scores["before"]["kl_bits_per_byte"]
    curves = metrics["held_out_curves"]
    assert [step for step, _ in curves["SFT on teacher samples"]] == [0, 10]  # the start and the last step
    assert curves["gold (hybrid, β=0, λ=0)"][-1][1] == pytest.approx(
        scores["gold (hybrid, β=0, λ=0)"]["kl_bits_per_byte"], rel=1e-4
    )  # the curve's last point is the table's figure
    assert "gold_beat_sft" in metrics
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "alignment.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    assert "KL(T‖S) bits/byte" in capsys.readouterr().out


@pytest.mark.slow
def test_opd_rl_example_on_the_demo_task_runs(tmp_path, monkeypatch, capsys) -> None:
    """examples/opd_rl_demo.py end to end at a tiny size: warm start, OPD-RL with the task reward, held-out scores."""
    from examples.opd_rl_demo import main
    from examples.rewards import names_the_sound

    assert names_the_sound([], ["The cow says Moo.", "Woof"], ["moo", "moo"]) == [1.0, 0.0]
    monkeypatch.setattr(sys, "argv", ["opd_rl_demo", "--warm-steps", "2", "--steps", "1", "--out", str(tmp_path)])
    main()
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("warm start") for line in lines)
    assert any(line.startswith("OPD-RL + task reward") and "held-out accuracy" in line for line in lines)
