"""``gold demo --teachers 2``: two teachers of two tokenizer families, one student, rows routed to their teacher."""

from __future__ import annotations

import json

import pytest

import gold.cli.demo_teachers as demo_teachers
from gold.cli.demo_task import SUM_OPERANDS, is_correct, sum_prompts
from gold.cli.demo_teachers import ADDITION, ANIMALS, ROUTED, TeachersSettings, run_teachers_demo, train_arm
from gold.cli.parser import main


def test_sum_table_holds_out_a_question_form_per_pair() -> None:
    train, held_out = sum_prompts()
    pairs = len(SUM_OPERANDS) ** 2
    assert len(held_out) == pairs and len(train) == 3 * pairs
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert {p.answer for p in held_out} == {p.answer for p in train}
    assert {p.text.split()[0] for p in held_out} == {"What", "Add", "How", "Compute"}  # each form held out somewhere
    assert is_correct(held_out[0], held_out[0].answer) and not is_correct(held_out[0], "1" + held_out[0].answer)


def test_teachers_flag_runs_the_two_teacher_demo(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(demo_teachers, "run_teachers_demo", lambda out, settings: calls.append((out, settings)) or 0)
    assert main(["demo", "--teachers", "2", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert calls == [(tmp_path, TeachersSettings(steps=3))]


def test_an_unknown_arm_is_refused_naming_the_known_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown arm 'routed'; known: routed gold, mixed gold"):
        train_arm("routed", None, None, {}, TeachersSettings(), tmp_path)


@pytest.mark.slow
def test_short_two_teacher_demo_prints_a_table_per_domain(tmp_path, capsys) -> None:
    settings = TeachersSettings(animals_teacher_steps=2, addition_teacher_steps=2, steps=4, batch_size=4,
                                held_out_samples=1)  # fmt: skip
    code = run_teachers_demo(tmp_path, settings)
    metrics = json.loads((tmp_path / "metrics_teachers.json").read_text())
    assert code == (0 if metrics["improved"] else 1)
    assert set(metrics["scores"]) == {"before", ROUTED}
    for scores in metrics["scores"].values():
        assert set(scores) == {ANIMALS, ADDITION}
        assert all(0 <= s["accuracy"] <= 1 and s["kl_bits_per_byte"] > 0 for s in scores.values())
    out = capsys.readouterr().out
    table = out[out.index("held-out, per teacher's domain") :].splitlines()
    assert "animals acc" in table[1] and "addition KL b/B" in table[1]
    assert [line.split("  ")[0] for line in table[2:5]] == ["before", ROUTED, "(teachers)"]
    assert f"{metrics['scores'][ROUTED][ADDITION]['kl_bits_per_byte']:.3f}" in table[3]
    assert metrics["rows"] == {ANIMALS: 60, ADDITION: 3 * len(SUM_OPERANDS) ** 2}
