"""Recovery arithmetic of the same-tokenizer control (issue 32): hand-computed on two seeds."""

from __future__ import annotations

import math

import pytest

from benchmarks.recovery import format_recovery, recovery

SFT, GOLD = "SFT on teacher samples", "gold hybrid (default)"


def run(sft_forward, gold_forward, sft_reverse, gold_reverse):
    return {SFT: {"kl_bits_per_byte": sft_forward, "reverse_kl_bits_per_byte": sft_reverse},
            GOLD: {"kl_bits_per_byte": gold_forward, "reverse_kl_bits_per_byte": gold_reverse}}  # fmt: skip


def test_recovery_is_the_advantage_across_over_the_advantage_on_one_tokenizer() -> None:
    cross = [run(1.6, 0.5, 0.9, 0.8), run(1.6, 0.6, 1.3, 0.7)]
    control = [run(1.4, 0.2, 0.6, 0.2), run(1.1, 0.3, 1.0, 0.3)]
    table = recovery(cross, control, SFT, GOLD)
    forward, reverse = table["KL(T‖S) on teacher text"], table["KL(S‖T) on own text"]
    assert forward["per_seed"] == pytest.approx([1.1 / 1.2, 1.0 / 0.8])
    assert forward["of_means"] == pytest.approx(1.05 / 1.0)
    assert reverse["per_seed"] == pytest.approx([0.1 / 0.4, 0.6 / 0.7])
    assert reverse["of_means"] == pytest.approx(0.35 / 0.55)
    assert reverse["gold_ratio"] == pytest.approx(0.75 / 0.25)
    text = format_recovery(table)
    assert "105%" in text and "64%" in text and "3.00×" in text


def test_no_advantage_on_one_tokenizer_is_nan_and_unequal_seeds_are_refused() -> None:
    table = recovery([run(1.0, 0.5, 1.0, 0.5)], [run(1.0, 1.0, 1.0, 1.0)], SFT, GOLD)
    assert math.isnan(table["KL(T‖S) on teacher text"]["of_means"])
    with pytest.raises(ValueError, match="same seeds in both settings, got 2 and 1"):
        recovery([run(1, 1, 1, 1)] * 2, [run(1, 1, 1, 1)], SFT, GOLD)
