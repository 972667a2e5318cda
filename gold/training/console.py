"""What a training run prints: one compact line per logging step (issue 30, item 4).

A logging step of :class:`gold.training.trainer.GoldTrainer` holds ~30 keys (loss terms, alignment counts, stop
rates per source, timings). transformers prints them all as a dict on every logging step; here the console gets
``step 3/4 · loss 2.31 (forward_kl 2.1, sft 0.21) · lr 1.0e-03 · 1.2 s/step · stop dataset 1.00`` instead, and the
whole dict still goes where it is read: ``trainer_state.json``'s ``log_history``, TensorBoard, W&B (the trainer's
own ``log`` and the reporting callbacks are untouched: only the printing callbacks are swapped).
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# the end-of-run summary transformers logs after the last step
SUMMARY_KEYS = ("train_runtime", "train_loss")


def compact_line(logs: dict[str, Any], *, step: int, max_steps: int, seconds_per_step: float | None) -> str:
    """One line for a training log: step, loss with its terms, learning rate, seconds per step, stop rates.

    Args:
        logs: the dict ``Trainer.log`` received (``loss``, ``learning_rate``, ``loss/<term>``, ``stop_rate/<source>``).
        step, max_steps: where the run is.
        seconds_per_step: wall seconds per optimizer step since the previous line (None: not known yet).
    """
    parts = [f"step {step}/{max_steps}"]
    terms = ", ".join(f"{key[5:]} {value:.4g}" for key, value in logs.items() if key.startswith("loss/"))
    parts.append(f"loss {logs['loss']:.4g}" + (f" ({terms})" if terms else ""))
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.1e}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    stops = " ".join(f"{key[10:]} {value:.2f}" for key, value in logs.items() if key.startswith("stop_rate/"))
    if stops:
        parts.append(f"stop {stops}")
    return " · ".join(parts)


def other_line(logs: dict[str, Any], *, step: int) -> str:
    """One line for any other log (held-out scores, the end-of-run summary): its numbers, briefly."""
    if all(key in logs for key in SUMMARY_KEYS):
        return f"done: {step} steps in {logs['train_runtime']:.1f} s, mean loss {logs['train_loss']:.4g}"
    numbers = ", ".join(f"{key} {value:.4g}" for key, value in logs.items()
                        if isinstance(value, int | float) and key not in ("epoch", "total_flos"))  # fmt: skip
    return f"step {step} · {numbers}"


class QuietBar(ProgressCallback):
    """transformers' progress bar, without its printed dict per log."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


class ConsoleLine(TrainerCallback):
    """Prints :func:`compact_line` per training log on the main process (through ``tqdm.write``: the bar stays
    whole); never changes ``logs``, which other callbacks read after it."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = (time.perf_counter(), state.global_step)  # a resumed run starts past 0

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs and "train_runtime" not in logs:
            now, per_step = time.perf_counter(), None
            if self._last is not None and state.global_step > self._last[1]:
                per_step = (now - self._last[0]) / (state.global_step - self._last[1])
            self._last = (now, state.global_step)
            line = compact_line(logs, step=state.global_step, max_steps=state.max_steps, seconds_per_step=per_step)
        else:
            line = other_line(logs, step=state.global_step)
        tqdm.write(line)


def use_console_line(trainer: Any) -> None:
    """Swaps ``trainer``'s printing callbacks (the bar's dict, or the bare printer) for :class:`ConsoleLine`; the
    bar itself stays when it was on."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietBar())
    trainer.pop_callback(PrinterCallback)
    trainer.add_callback(ConsoleLine())
