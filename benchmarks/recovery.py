"""How much of what distillation gives on one tokenizer survives crossing tokenizers (issue 32).

Recovery, per direction = (SFT − gold) across tokenizers ÷ (SFT − gold) on the same tokenizer: the share of the
same-tokenizer advantage over SFT that the cross-tokenizer student keeps (100 %: crossing costs nothing). Reported
per seed and of the seed means, for KL(teacher‖student) on the teacher's text and KL(student‖teacher) on the
student's own samples, beside how much further from the teacher the cross-tokenizer student's own text is than the
control's (gold across ÷ gold same tokenizer, of the means).
"""

from __future__ import annotations

import statistics
from typing import Any

DIRECTIONS = {"KL(T‖S) on teacher text": "kl_bits_per_byte", "KL(S‖T) on own text": "reverse_kl_bits_per_byte"}


def advantage(run: dict[str, Any], metric: str, sft: str, gold: str) -> float:
    """SFT's value minus distillation's in one seed's run (positive: distillation is closer to the teacher)."""
    return float(run[sft][metric]) - float(run[gold][metric])


def recovery(cross: list[dict[str, Any]], control: list[dict[str, Any]], sft: str,
             gold: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per direction: ``per_seed`` recoveries, ``of_means`` (mean advantage across ÷ mean advantage same), the mean
    advantages themselves, and ``gold_ratio`` (gold's mean value across ÷ same tokenizer). ``cross`` and ``control``
    hold one run per seed, in the same seed order (:func:`benchmarks.bench_quality.run_seed`)."""
    if len(cross) != len(control) or not cross:
        raise ValueError(f"recovery needs the same seeds in both settings, got {len(cross)} and {len(control)} runs")
    out = {}
    for direction, metric in DIRECTIONS.items():
        across = [advantage(run, metric, sft, gold) for run in cross]
        same = [advantage(run, metric, sft, gold) for run in control]
        gold_across = statistics.mean(float(run[gold][metric]) for run in cross)
        gold_same = statistics.mean(float(run[gold][metric]) for run in control)
        out[direction] = {
            "per_seed": [a / s if s else float("nan") for a, s in zip(across, same, strict=True)],
            "of_means": statistics.mean(across) / statistics.mean(same) if statistics.mean(same) else float("nan"),
            "advantage_across": statistics.mean(across), "advantage_same": statistics.mean(same),
            "gold_ratio": gold_across / gold_same if gold_same else float("nan"),
        }  # fmt: skip
    return out


def format_recovery(table: dict[str, dict[str, Any]]) -> str:
    """The recovery table as text."""
    head = f"{'direction':<26}{'SFT−gold across':>16}{'SFT−gold same':>15}{'recovery':>10}  per seed{'':<12}"
    lines = [head + "gold across ÷ same"]
    for direction, row in table.items():
        seeds = " / ".join(f"{value:.0%}" for value in row["per_seed"])
        lines.append(f"{direction:<26}{row['advantage_across']:>16.3f}{row['advantage_same']:>15.3f}"
                     f"{row['of_means']:>10.0%}  {seeds:<20}{row['gold_ratio']:.2f}×")  # fmt: skip
    return "\n".join(lines)
