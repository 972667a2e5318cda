"""Byte marginal: both models' next-token distributions folded onto the next byte.

Shape legend: G groups, V one side's vocabulary, 258 = 256 byte values + END (the stop ids: the
completion ends here, an outcome both sides predict) + one bucket for tokens that spell no byte (other
specials, padded embedding rows).

At the start of every group both models condition on exactly the same bytes (all earlier groups), so
"which byte comes next" is a question both can answer: sum each next-token distribution over the
tokens whose bytes start with that byte. The divergence between the two 258-bin distributions needs no
vocabulary map. It is taken on the bins **both** sides can produce (:func:`shared_bins`), each side
renormalized there: a byte only one tokenizer starts a token with (Mistral's byte fallback has
``<0xF1>``, SmolLM2 has no token for that byte) would otherwise make forward KL infinite for any model.

(A SentencePiece token ``▁x`` starts with a space; at the very start of a text, where the dummy prefix
is not text, that reading is off by the synthetic space.)
"""

from __future__ import annotations

import torch

from gold.data.byte_bins import END_BIN, NO_BYTE, NUM_BINS, first_byte_table, shared_bins
from gold.losses.divergences import generalized_jsd

__all__ = ["END_BIN", "NO_BYTE", "NUM_BINS", "byte_marginal", "first_byte_table", "fold_to_bytes", "on_shared_bins",
           "shared_bins"]  # fmt: skip


def fold_to_bytes(logprobs: torch.Tensor, bins: torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """(G, V) log-probability rows → (G, 258) log-probabilities of the next byte (or of the end); with other
    ``bins`` and ``num_bins``, of any classes of tokens (:mod:`gold.losses.projection`)."""
    probs = logprobs.exp()
    folded = torch.zeros(probs.shape[0], num_bins, dtype=probs.dtype, device=probs.device)
    folded = folded.index_add(1, bins.to(probs.device), probs)
    # log of empty bins is -inf with a zero gradient (log is taken of a stand-in 1 there)
    present = folded > 0
    logs = torch.where(present, folded, torch.ones_like(folded)).log()
    return torch.where(present, logs, torch.full_like(logs, float("-inf")))


def on_shared_bins(byte_logprobs: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """(G, 258) next-byte log-probabilities → (G, S) on the ``shared`` bins, renormalized."""
    kept = byte_logprobs[:, shared.to(byte_logprobs.device)]
    return kept - torch.logsumexp(kept, dim=-1, keepdim=True)


def byte_marginal(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    student_bins: torch.Tensor,
    teacher_bins: torch.Tensor,
    shared: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """Divergence between the two next-byte distributions at each group start, per group, on the bins
    both sides can produce (renormalized).

    Args:
        student_logprobs: (G, Vs) student next-token log-probabilities at group starts.
        teacher_logprobs: (G, Vt) teacher next-token log-probabilities at the same byte positions.
        student_bins: (Vs,) from :func:`first_byte_table`.
        teacher_bins: (Vt,) likewise.
        shared: (258,) bool from :func:`shared_bins` when already computed (``PairTables.shared_bins``).
        beta: generalized-JSD β (0: KL(teacher ‖ student)).
    """
    if shared is None:
        shared = shared_bins(student_bins, teacher_bins)
    student_bytes = on_shared_bins(fold_to_bytes(student_logprobs, student_bins), shared)
    teacher_bytes = on_shared_bins(fold_to_bytes(teacher_logprobs, teacher_bins), shared)
    return generalized_jsd(student_bytes, teacher_bytes, beta=beta)
