"""Logits that are never materialised: a model's hidden states and its output layer (the GPU path).

Shape legend: B batch, T positions, H hidden size, V vocabulary (logit) size, N grouped tokens, n rows of one block.

:class:`HiddenLogits` stands where the losses take (B, T, V) logits. :func:`gold.losses.merge.index_groups`,
:func:`~gold.losses.merge.rows_of` and :func:`~gold.losses.merge.start_rows` ask it for the rows they need
(:meth:`HiddenLogits.token_logprobs`, :meth:`HiddenLogits.log_softmax`), and it computes only those,
``head(hidden[rows])``, in float32, a block of rows at a time. Where gradients are needed each block is wrapped in
non-reentrant activation checkpointing, so its (n, V) logits are freed after forward and recomputed in backward: peak
memory grows with the block (``rows_per_block × V``), never with B · T · V. The loss
(:func:`gold.losses.cross_tokenizer_loss`) checkpoints each chunk of groups the same way.

Values equal the logits path's: the same float32 rows from the same logits (``OutputHead.logits`` runs the product in
the weight's dtype, as the model does); only where a bf16 model would round its soft-capped logits to bf16 are these
rows more exact. ``tests/gold/losses/test_hidden.py`` checks values and gradients term by term.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from gold.losses.head import OutputHead

# rows of one block when none is given: 2^24 float32 logits (64 MiB) per (n, V) buffer
DEFAULT_BLOCK_VALUES = 1 << 24


class HiddenLogits:
    """(B, T, H) hidden states and the output layer that turns them into (B, T, V) logits on demand.

    Args:
        hidden: (B, T, H) the model's last hidden states (what its output layer reads).
        head: the model's output layer (:func:`gold.losses.head.output_head`).
        rows_per_block: rows computed at once (default: 2^24 values' worth); the memory bound scales with it.
        autocast: the dtype of the autocast the model ran under (mixed precision), or None: the output layer is applied
            under the same autocast, so its product has the precision the model's own layer would have had.
    """

    def __init__(self, hidden: torch.Tensor, head: OutputHead, *, rows_per_block: int | None = None,
                 autocast: torch.dtype | None = None) -> None:  # fmt: skip
        if hidden.dim() != 3 or hidden.shape[-1] != head.weight.shape[1]:
            raise ValueError(f"hidden states must be (B, T, {head.weight.shape[1]}) for this output layer, got "
                             f"{tuple(hidden.shape)}")  # fmt: skip
        if rows_per_block is not None and rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1, got {rows_per_block}")
        self.hidden = hidden
        self.head = head
        self.autocast = autocast
        self.rows_per_block = rows_per_block or max(1, DEFAULT_BLOCK_VALUES // head.weight.shape[0])

    @property
    def shape(self) -> torch.Size:
        """(B, T, V): the shape of the logits it stands for."""
        return torch.Size((*self.hidden.shape[:2], self.head.weight.shape[0]))

    @property
    def dtype(self) -> torch.dtype:
        """float32: what its rows are computed in."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        """Where the hidden states are."""
        return self.hidden.device

    @property
    def requires_grad(self) -> bool:
        """Whether rows computed from it carry gradients (to the hidden states or the output layer)."""
        return self.hidden.requires_grad or self.head.requires_grad

    def detach(self) -> HiddenLogits:
        """The same logits outside the autograd graph (a target, like ``logits.detach()``)."""
        return HiddenLogits(self.hidden.detach(), self.head.detach(), rows_per_block=self.rows_per_block,
                            autocast=self.autocast)  # fmt: skip

    def _head(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """(n, V) float32 logits of (n, H) hidden rows, under the model's autocast if it ran under one."""
        if self.autocast is None:
            return self.head.logits(hidden_rows)
        with torch.autocast(self.hidden.device.type, dtype=self.autocast):
            return self.head.logits(hidden_rows)

    def empty_view(self, dtype: torch.dtype) -> torch.Tensor:
        """A (0,) tensor in the graph of the hidden states (a zero loss that backward can run through)."""
        return self.hidden.flatten()[:0].to(dtype)

    def logits(self, rows: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """(n, V) float32 logits of the flattened positions ``rows`` (all B · T when None), divided by the temperature.
        Differentiable, and materialised: callers keep n small."""
        flat = self.hidden.flatten(0, 1)
        picked = flat if rows is None else flat.index_select(0, rows)
        logits = self._head(picked)
        return logits if temperature == 1.0 else logits / temperature

    @torch.no_grad()
    def dense(self, rows: int) -> torch.Tensor:
        """(rows, T, V) float32 logits of the first ``rows`` examples, detached (for logging a few completions)."""
        hidden = self.hidden[:rows]
        return self._head(hidden.flatten(0, 1)).view(*hidden.shape[:2], -1)

    def log_softmax(self, rows: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(n, V) float32 next-token log-probabilities of the flattened positions ``rows``."""
        return torch.log_softmax(self.logits(rows, temperature), dim=-1)

    def token_logprobs(self, rows: torch.Tensor, tokens: torch.Tensor,
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(log_normalizer, token_logprob)``, two (n,) float32 vectors for the flattened positions ``rows`` and the
        tokens they predict, a block at a time (checkpointed when gradients are needed)."""
        parts = [self._block(rows[i : i + self.rows_per_block], tokens[i : i + self.rows_per_block], temperature)
                 for i in range(0, rows.shape[0], self.rows_per_block)]  # fmt: skip
        if not parts:
            empty = self.empty_view(torch.float32)
            return empty, empty
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _block(self, rows: torch.Tensor, tokens: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        def run(picked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self._head(picked)  # (n, V) float32
            logits = logits if temperature == 1.0 else logits / temperature
            normalizer = torch.logsumexp(logits, dim=-1)
            return normalizer, logits.gather(1, tokens[:, None])[:, 0] - normalizer

        picked = self.hidden.flatten(0, 1).index_select(0, rows)  # (n, H): kept, small
        if torch.is_grad_enabled() and self.requires_grad:
            return checkpoint(run, picked, use_reentrant=False)  # type: ignore[no-any-return]
        return run(picked)

    def completion_logprobs(self, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(B, L - 1) log-probability of each target (``targets[:, j]`` predicted by position j; -100 is padding,
        given 0), a block at a time."""
        width = targets.shape[1]
        batch_index, position = torch.nonzero(targets != -100, as_tuple=True)
        flat = batch_index * self.shape[1] + position
        _, picked = self.token_logprobs(flat, targets[batch_index, position], temperature)
        out = torch.zeros(targets.shape[0], width, dtype=torch.float32, device=self.device)
        return out.index_put((batch_index, position), picked)


# (g, V) float32 buffers the loss from hidden states holds at its peak, forward or backward, measured on CPU with every
# term on (tests/gold/losses/test_memory.py): the chunk's rows of both sides, their softmaxes and the terms'
# intermediates, kept through the chunk's recomputed backward
HIDDEN_PATH_BUFFERS = 16


def hidden_path_bound(chunk: int, student_vocab: int, teacher_vocab: int, *, student_hidden: int,
                      teacher_hidden: int, tokens: int) -> int:  # fmt: skip
    """Bytes the loss from hidden states may add at its peak over its inputs: ``HIDDEN_PATH_BUFFERS`` (g, V) float32
    buffers of the larger vocabulary, the student output layer's gradient twice in float32 (a chunk's and the sum),
    and 64 bytes per token and unit of the larger hidden size (the rows read from the hidden states and their
    gradient, and per-token scalars). It does not grow with the sequence length but through the hidden states'
    own size."""
    buffers = HIDDEN_PATH_BUFFERS * chunk * max(student_vocab, teacher_vocab) * 4
    return buffers + 2 * student_vocab * student_hidden * 4 + 64 * tokens * max(student_hidden, teacher_hidden)
