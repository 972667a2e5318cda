"""The console line of a logging step (:mod:`gold.training.console`): compact, with the named fields."""

from __future__ import annotations

from gold.training.console import compact_line, other_line

LOGS = {"loss": 2.3141, "grad_norm": 1.5, "learning_rate": 1e-3, "loss/forward_kl": 2.1, "loss/sft": 0.2141,
        "align/groups": 37.0, "hybrid/matched_jsd": 0.4, "stop_rate/dataset": 1.0, "stop_rate/student": 0.25,
        "time/train_s": 0.8, "epoch": 0.5}  # fmt: skip


def test_a_training_log_is_one_line_with_step_loss_terms_lr_speed_and_stop_rates() -> None:
    line = compact_line(LOGS, step=3, max_steps=50, seconds_per_step=1.234)
    assert line == ("step 3/50 · loss 2.314 (forward_kl 2.1, sft 0.2141) · lr 1.0e-03 · 1.23 s/step · "
                    "stop dataset 1.00 student 0.25")  # fmt: skip


def test_the_first_line_has_no_speed_and_a_log_without_terms_shows_the_loss_alone() -> None:
    line = compact_line({"loss": 0.5, "learning_rate": 2e-5}, step=1, max_steps=4, seconds_per_step=None)
    assert line == "step 1/4 · loss 0.5 · lr 2.0e-05"


def test_the_run_summary_and_held_out_scores_are_short_lines() -> None:
    summary = {"train_runtime": 10.44, "train_samples_per_second": 1.5, "train_loss": 0.2986, "epoch": 1.0,
               "total_flos": 12345.0}  # fmt: skip
    assert other_line(summary, step=4) == "done: 4 steps in 10.4 s, mean loss 0.2986"
    assert (
        other_line({"eval/kl_bits_per_byte": 0.51234, "epoch": 1.0}, step=10)
        == "step 10 · eval/kl_bits_per_byte 0.5123"
    )
