"""What each optional loss term costs: forward + backward of the loss alone, the default hybrid against the hybrid plus
one term, interleaved in one process, on bench_loss's batch (Qwen2.5 student ← Llama-3 teacher, 151,936 / 128,256
logit rows, tiny random models).

    python -m benchmarks.bench_terms [--batch 8] [--tokens 256] [--repeats 7]

Reported: the median seconds of each configuration and its ratio to the default (ratios, not absolute times: the
machine may be shared). The pair tables, projection classes included, are built once before timing, as the trainer
does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_loss import STUDENT_ROWS, TEACHER_ROWS, build_inputs
from gold.config import LossConfig
from gold.losses import PairTables, cross_tokenizer_loss
from gold.losses.fused import warm_up
from gold.models.zoo import load_tokenizer

CONFIGS = {
    "hybrid (default)": {},
    "+ span 1": {"span_weight": 1.0},
    "+ byte marginal 1": {"byte_marginal_weight": 1.0},
    "+ projection 1": {"projection_weight": 1.0},
}


def with_classes(batch: Any) -> Any:
    """The batch with the projection's classes in its tables (built here, once, as ``PairTables.build`` does)."""
    import dataclasses

    tables = PairTables.build(load_tokenizer("qwen2.5"), load_tokenizer("llama-3"), student_rows=STUDENT_ROWS,
                              teacher_rows=TEACHER_ROWS, with_prefix_classes=True)  # fmt: skip
    return dataclasses.replace(batch, tables=tables)


def time_once(student: torch.Tensor, teacher: torch.Tensor, batch: Any, config: LossConfig) -> float:
    leaf = student.detach().requires_grad_()
    start = time.perf_counter()
    loss, _ = cross_tokenizer_loss(leaf, teacher, batch, config)
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inputs.pt"
        build_inputs(args.batch, args.tokens, "cpu", path)
        data = torch.load(path, weights_only=False)
    batch = with_classes(data["batch"])
    warm_up()
    configs = {name: LossConfig(**options) for name, options in CONFIGS.items()}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, config in configs.items():
            seconds[name].append(time_once(data["student_logits"], data["teacher_logits"], batch, config))
    medians = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    base = medians["hybrid (default)"]
    print(f"{'configuration':<22}{'median s':>10}{'× default':>11}")
    for name, value in medians.items():
        print(f"{name:<22}{value:>10.3f}{value / base:>10.2f}×")
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "tokens": args.tokens, "median_s": medians}, indent=2))


if __name__ == "__main__":
    main()
