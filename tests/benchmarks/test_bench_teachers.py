"""The several-teachers harness's arithmetic (issue 31): means, half-ranges and the issue's target, by hand."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.bench_teachers import format_summary, summary, target
from gold.cli.demo_teachers import ADDITION, ANIMALS, ROUTED, SFT_UNION, SINGLE


def scores(animals_acc, animals_kl, addition_acc, addition_kl):
    return {ANIMALS: {"accuracy": animals_acc, "kl_bits_per_byte": animals_kl, "stop_rate": 1.0},
            ADDITION: {"accuracy": addition_acc, "kl_bits_per_byte": addition_kl, "stop_rate": 1.0},
            "train_seconds": 10.0}  # fmt: skip


def run(routed, sft, single_animals, single_addition):
    return {"arms": {ROUTED: scores(*routed), SFT_UNION: scores(*sft), SINGLE[ANIMALS]: scores(*single_animals),
                     SINGLE[ADDITION]: scores(*single_addition)}}  # fmt: skip


RUNS = [
    run((0.80, 0.50, 0.90, 0.30), (0.40, 1.50, 0.88, 0.35), (0.90, 0.45, 0.0, 9.0), (0.0, 9.0, 0.95, 0.28)),
    run((0.70, 0.60, 1.00, 0.34), (0.50, 1.70, 0.92, 0.31), (0.80, 0.55, 0.0, 9.0), (0.0, 9.0, 1.00, 0.30)),
]


def test_summary_is_the_mean_and_half_the_range_per_domain() -> None:
    table = summary(RUNS)
    assert table[ROUTED][ANIMALS]["accuracy"] == pytest.approx(0.75)
    assert table[ROUTED][ANIMALS]["accuracy_spread"] == pytest.approx(0.05)
    assert table[SFT_UNION][ADDITION]["kl_bits_per_byte_spread"] == pytest.approx(0.02)
    assert table[ROUTED]["train_seconds"] == 10.0
    assert "75.0% ± 5.0%" in format_summary(table).splitlines()[1]
    assert "0.330 ± 0.020" in format_summary(table).splitlines()[2]


def test_target_compares_routed_with_each_single_teacher_student_and_with_sft_beyond_the_spread() -> None:
    checks = target(summary(RUNS))
    animals, addition = checks[ANIMALS], checks[ADDITION]
    assert animals["accuracy_ratio_to_single"] == pytest.approx(0.75 / 0.85)  # under 90 %
    assert animals["reached_90_percent"] is False
    assert addition["accuracy_ratio_to_single"] == pytest.approx(0.95 / 0.975) and addition["reached_90_percent"]
    # animals: routed 75 % ± 5 against SFT 45 % ± 5 (margin 30 points > 10); KL 0.55 ± 0.05 against 1.6 ± 0.1
    assert animals["accuracy_margin_over_sft"] == pytest.approx(0.30) and animals["accuracy_beats_sft_beyond_spread"]
    assert animals["kl_bits_per_byte_margin_over_sft"] == pytest.approx(1.05)
    # addition: 95 % ± 5 against 90 % ± 2 (margin 5 points < 7); KL 0.32 ± 0.02 against 0.33 ± 0.02 (0.01 < 0.04)
    assert addition["accuracy_margin_over_sft"] == pytest.approx(0.05)
    assert not addition["accuracy_beats_sft_beyond_spread"]
    assert not addition["kl_bits_per_byte_beats_sft_beyond_spread"]


def test_combine_summarises_the_runs_of_several_files_and_refuses_other_settings(tmp_path, monkeypatch) -> None:
    from benchmarks.bench_teachers import main

    part = {"steps": 400, "lr": 0.003, "arms": [ROUTED, SFT_UNION, *SINGLE.values()], "seconds": 5.0}
    paths = [tmp_path / "seed0.json", tmp_path / "seed1.json", tmp_path / "other.json"]
    settings_of = [{"seed": 0}, {"seed": 1}, {"seed": 0, "steps": 9}]
    for path, run_, settings in zip(paths, [*RUNS, RUNS[0]], settings_of, strict=True):
        path.write_text(json.dumps(part | {"runs": [run_], "settings": settings}), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["bench", "--combine", *map(str, paths[:2]), "--json", str(tmp_path / "all.json")])
    main()
    combined = json.loads((tmp_path / "all.json").read_text(encoding="utf-8"))
    assert combined["seeds"] == 2 and combined["steps"] == 400
    assert combined["summary"] == json.loads(json.dumps(summary(RUNS)))
    monkeypatch.setattr(sys, "argv", ["bench", "--combine", str(paths[0]), str(paths[2])])
    with pytest.raises(SystemExit):
        main()
