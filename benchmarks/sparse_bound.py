"""How far the hybrid from sparse teacher rows (top-K + tail) is from the dense hybrid, beside the stated bound.

    python benchmarks/sparse_bound.py [--beta 0.5] [--rows 256]

Random chain-rule rows (a log-softmax row plus a prefix), teacher vocabulary 29, student 37, 9 matched pairs; the
teacher's rows reduced to their top-K with the rest as the tail (:mod:`gold.teacher.sparse`). Per K: the mean
|hybrid(sparse) − hybrid(dense)| over rows, the mean of :func:`gold.losses.hybrid.sparse_error_bound` and the mean tail
mass, for near-uniform (scale 1) to peaked (scale 6) teachers. Exact ULD.
"""

from __future__ import annotations

import argparse

import torch

from gold.losses.hybrid import hybrid, sparse_error_bound
from gold.losses.uld import uld
from gold.teacher import dense_rows, top_k_rows

STUDENT_VOCAB, TEACHER_VOCAB = 37, 29
MATCHED = (torch.tensor([0, 3, 4, 7, 9, 12, 20, 21, 30]), torch.tensor([1, 2, 5, 6, 8, 11, 15, 16, 28]))


def chain_rule_rows(rows: int, vocab: int, seed: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    prefix = -torch.rand(rows, 1, generator=gen)
    return torch.log_softmax(scale * torch.randn(rows, vocab, generator=gen), -1) + prefix


def sparse_of(rows: torch.Tensor, k: int) -> torch.Tensor:
    prefix = torch.logsumexp(rows, -1, keepdim=True)
    return dense_rows(top_k_rows((rows - prefix)[:, None], k), rows.shape[-1])[:, 0] + prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    print(f"beta {args.beta}: mean |error| / mean bound / mean tail mass per K")
    for scale in (1.0, 3.0, 6.0):
        student = chain_rule_rows(args.rows, STUDENT_VOCAB, 10, scale)
        teacher = chain_rule_rows(args.rows, TEACHER_VOCAB, 20, scale)
        options = dict(student_matched=MATCHED[0], teacher_matched=MATCHED[1], beta=args.beta, distance=uld,
                       student_log_totals=torch.logsumexp(student, -1),
                       teacher_log_totals=torch.logsumexp(teacher, -1))  # fmt: skip
        exact = hybrid(student, teacher, **options).loss  # type: ignore[arg-type]
        cells = []
        for k in (1, 2, 4, 8, 16, TEACHER_VOCAB):
            sparse = sparse_of(teacher, k)
            approx = hybrid(student, sparse, teacher_tail=TEACHER_VOCAB, **options).loss  # type: ignore[arg-type]
            tail = sparse[:, TEACHER_VOCAB].exp()
            moved = (student[:, MATCHED[0]].exp() * torch.isneginf(sparse[:, MATCHED[1]])).sum(-1)
            bound = sparse_error_bound(tail, moved, beta=args.beta)
            cells.append(f"K={k}: {float((approx - exact).abs().mean()):.4f} / {float(bound.mean()):.3f} / "
                         f"{float(tail.mean()):.3f}")  # fmt: skip
        print(f"scale {scale:.0f}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
