"""Peak memory of the loss with and without the GPU path, measured on CPU with the same code, at the DESIGN §7
vocabularies: a Qwen2.5-0.5B-shaped student (151,936 rows, hidden 896) and a Llama-3.2-1B-shaped teacher (128,256
rows, hidden 2048), bf16, every completion token its own group.

    python -m benchmarks.memory_gpu_path [--batch 8] [--tokens 512] [--chunk 64] [--json OUT]

Both paths start from the two models' last hidden states and output layers (what exists once the decoders have
run); the count is every byte allocated above that over the loss's forward and backward
(``torch.distributed._tools.mem_tracker.MemTracker``). The logits path makes each side's (B, T, V) logits with the
output layer, as the models do, and hands them to :func:`gold.losses.cross_tokenizer_loss`; the GPU path hands over
:class:`gold.losses.hidden.HiddenLogits`. Both use the GPU's settings: the torch path, exact ULD, ``chunk`` groups
per chunk. The bound is :func:`gold.losses.hidden.hidden_path_bound`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from alignment import AlignmentStats
from gold.config import LossConfig
from gold.losses import AlignedBatch, PairTables, cross_tokenizer_loss
from gold.losses.head import OutputHead
from gold.losses.hidden import HiddenLogits, hidden_path_bound
from gold.models.zoo import load_tokenizer

STUDENT_HIDDEN, TEACHER_HIDDEN = 896, 2048


def inputs(batch: int, tokens: int) -> tuple[AlignedBatch, dict[str, torch.Tensor]]:
    student_tokenizer, teacher_tokenizer = load_tokenizer("qwen2.5"), load_tokenizer("llama-3")
    student_rows, teacher_rows = 151_936, 128_256
    tables = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=student_rows,
                              teacher_rows=teacher_rows)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    groups = (torch.arange(tokens) - 1).expand(batch, tokens).clone()
    aligned = AlignedBatch(torch.randint(0, student_rows, (batch, tokens), generator=gen),
                           torch.randint(0, teacher_rows, (batch, tokens), generator=gen), groups, groups.clone(),
                           tables, AlignmentStats.combine([]))  # fmt: skip
    bf16 = torch.bfloat16
    leaves = {
        "student_hidden": torch.randn(batch, tokens, STUDENT_HIDDEN, generator=gen).to(bf16).requires_grad_(),
        "student_weight": (torch.randn(student_rows, STUDENT_HIDDEN, generator=gen) * 0.05).to(bf16).requires_grad_(),
        "teacher_hidden": torch.randn(batch, tokens, TEACHER_HIDDEN, generator=gen).to(bf16),
        "teacher_weight": (torch.randn(teacher_rows, TEACHER_HIDDEN, generator=gen) * 0.05).to(bf16),
    }
    return aligned, leaves


def peak_extra_bytes(path: str, aligned: AlignedBatch, leaves: dict[str, torch.Tensor], chunk: int,
                     **loss: Any) -> int:  # fmt: skip
    """Bytes allocated at the peak of the loss's forward and backward above what existed before, from ``leaves``
    (``student_hidden``, ``student_weight``, ``teacher_hidden``, ``teacher_weight``): through :class:`HiddenLogits`
    (``path`` "hidden") or through each side's full logits ("logits"); the torch path, ``chunk`` groups per chunk,
    ``loss``: further LossConfig fields. Also used by ``tests/gold/losses/test_memory.py``."""
    config = LossConfig(implementation="torch", chunk_groups=chunk, **loss)
    tracker = MemTracker()
    tracker.track_external(*leaves.values())
    with tracker:
        before = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"]
        student_head = OutputHead(leaves["student_weight"], None)
        teacher_head = OutputHead(leaves["teacher_weight"], None)
        if path == "hidden":
            student: Any = HiddenLogits(leaves["student_hidden"], student_head, rows_per_block=chunk)
            teacher: Any = HiddenLogits(leaves["teacher_hidden"], teacher_head, rows_per_block=chunk)
        else:  # what the models hand over: logits of every position
            student = torch.nn.functional.linear(leaves["student_hidden"], leaves["student_weight"])
            with torch.no_grad():
                teacher = torch.nn.functional.linear(leaves["teacher_hidden"], leaves["teacher_weight"])
        loss_value, _ = cross_tokenizer_loss(student, teacher, aligned, config)
        loss_value.backward()
        del loss_value, student, teacher
    for leaf in leaves.values():
        leaf.grad = None
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - before)


def peak(path: str, aligned: AlignedBatch, leaves: dict[str, torch.Tensor], chunk: int) -> dict[str, float]:
    """:func:`peak_extra_bytes` with the GPU's settings (exact ULD), in GiB, and the seconds it took."""
    began = time.perf_counter()
    bytes_ = peak_extra_bytes(path, aligned, leaves, chunk, uld_method="exact")
    return {"peak_extra_gib": bytes_ / 2**30, "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    aligned, leaves = inputs(args.batch, args.tokens)
    result: dict[str, Any] = {"batch": args.batch, "tokens": args.tokens, "chunk": args.chunk, "dtype": "bfloat16"}
    for path in ("hidden", "logits"):
        result[path] = peak(path, aligned, leaves, args.chunk)
        print(path, result[path], flush=True)
    bound = hidden_path_bound(args.chunk, 151_936, 128_256, student_hidden=STUDENT_HIDDEN,
                              teacher_hidden=TEACHER_HIDDEN, tokens=args.batch * args.tokens)  # fmt: skip
    result["hidden_bound_gib"] = bound / 2**30
    result["logits_over_hidden"] = result["logits"]["peak_extra_gib"] / result["hidden"]["peak_extra_gib"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
