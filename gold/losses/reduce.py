"""Reduce per-row losses to one number, correctly under gradient accumulation.

The loss of a step is the mean over the aligned groups of the *global* batch: the sum over this
micro-batch's rows divided by the number of rows in all micro-batches of the optimizer step
(``num_items_in_batch``, as transformers' Trainer passes it). A plain per-micro-batch mean would weigh
short micro-batches more (TRL's ULD path does that). Empty micro-batches add nothing (an empty sum is
0, still connected to the graph), and a non-finite value raises instead of poisoning the weights.
"""

from __future__ import annotations

import torch


class NonFiniteLossError(FloatingPointError):
    """A loss term came out NaN or infinite; the message names the term and the step."""


def global_denominator(num_rows: int, num_items_in_batch: int | torch.Tensor | None = None) -> int | torch.Tensor:
    """What a micro-batch's row sum is divided by: the rows of the whole optimizer step
    (``num_items_in_batch``) or, without it, this micro-batch's ``num_rows``; 1 when there are no rows
    anywhere (the empty sum stays 0, with no division by zero). A tensor stays a tensor (no device sync)."""
    denominator = num_rows if num_items_in_batch is None else num_items_in_batch
    if isinstance(denominator, torch.Tensor):
        return torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return denominator if denominator > 0 else 1


def reduce_rows(rows: torch.Tensor, *, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of ``rows`` over the global number of rows (:func:`global_denominator`).

    Args:
        rows: (R,) per-row losses of this micro-batch.
        num_items_in_batch: rows in the whole optimizer step (all micro-batches, all ranks);
            defaults to R (a plain mean).
    """
    denominator = global_denominator(rows.shape[0], num_items_in_batch)
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(rows.device)
    return rows.sum() / denominator


def loss_is_finite(value: torch.Tensor | float) -> bool:
    """Finite and below 1e15: above it a divergence has met a zero-probability floor (gold.losses.divergences)."""
    tensor = torch.as_tensor(value).detach()
    return bool((torch.isfinite(tensor) & (tensor.abs() < 1e15)).all())


def check_finite(value: torch.Tensor, *, term: str, step: int | None = None, check: bool = True) -> torch.Tensor:
    """Return ``value`` or raise :class:`NonFiniteLossError` naming ``term`` and ``step`` (``check=False``: return
    it as it is; the trainer checks on every process at once before the optimizer step)."""
    if check and not loss_is_finite(value):
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(
            f"loss term {term!r} is {value.detach().flatten()[:4].tolist()}{where}; check the inputs of this term "
            "(a teacher giving zero probability to text the student produced makes forward KL infinite)"
        )
    return value
