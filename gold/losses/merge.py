"""Group rows by the chain rule: one log-probability row per aligned group.

Shape legend: B batch, T tokens of one side, V that side's vocabulary (embedding rows), N grouped
tokens in the batch, G groups in the batch.

For a group whose tokens are ``x_a … x_b`` (``logits[:, k]`` predicts token ``k + 1``)::

    row(v) = Σ_{j=a}^{b-1} log p(x_j | x_<j) + log p(v | x_≤b-1)

the log-probability of "the group's bytes up to its last token, then v". Its observed column,
``row(x_b)``, is the exact log-likelihood of the group's bytes. The row sums to the probability of the
prefix (1 for a single-token group), not to 1; :func:`with_rest_bucket` adds the missing mass as one
extra outcome ("any other continuation") so that divergences compare proper distributions.
TRL's default ``observed`` merge reads each token's own position, which predicts the *next* token;
this module never does.

Precision: whatever the logits' dtype, normalizers, rows and every scalar here are float32 (float64
logits stay float64, :func:`reduction_dtype`). A bf16 log-normalizer near 10 is off by up to 2^-5 nats,
which put the span term 37 % off on one measured batch. Only the rows a step needs are upcast, a chunk
at a time: a float32 copy of the whole (B, T, V) logits is never made, in forward or backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupIndex:
    """Everything about the groups of a batch except their (G, V) rows: scalars, cheap to keep.

    Attributes:
        observed: (G,) log-likelihood of each group's bytes (the row's observed column).
        prefix: (G,) log-probability of each group's tokens before its last.
        log_normalizer: (G,) log-partition of the row predicting each group's last token.
        start_normalizer: (G,) log-partition of the row predicting each group's first token.
        example: (G,) int64 example of each group.
        last_position: (G,) int64 position of each group's last token.
        first_position: (G,) int64 position of each group's first token.
        temperature: the logits are divided by it (after the upcast) before every softmax.
    """

    observed: torch.Tensor
    prefix: torch.Tensor
    log_normalizer: torch.Tensor
    start_normalizer: torch.Tensor
    example: torch.Tensor
    last_position: torch.Tensor
    first_position: torch.Tensor
    temperature: float

    @property
    def num_groups(self) -> int:
        return int(self.observed.shape[0])


@dataclass(frozen=True)
class GroupRows:
    """Chain-rule rows of every group of a batch, in (example, group) order.

    Attributes:
        logprobs: (G, V) log-probability rows.
        index: the scalars and positions of the groups.
    """

    logprobs: torch.Tensor
    index: GroupIndex

    @property
    def observed(self) -> torch.Tensor:
        """(G,) log-likelihood of each group's bytes."""
        return self.index.observed


def grouped_positions(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the grouped tokens are and which global group each belongs to.

    Args:
        groups: (B, T) int64 group of each token within its example, -1 outside every group.

    Returns:
        ``(batch_index, position, global_group, num_groups)``: three (N,) int64 tensors in
        (example, position) order, and (B,) groups per example.
    """
    if groups.dim() != 2:
        raise ValueError(f"groups must be (B, T), got shape {tuple(groups.shape)}")
    batch_index, position = torch.nonzero(groups >= 0, as_tuple=True)
    local = groups[batch_index, position]
    num_groups = torch.where(groups >= 0, groups + 1, 0).amax(dim=1)  # (B,)
    offsets = torch.cumsum(num_groups, 0) - num_groups  # (B,)
    return batch_index, position, offsets[batch_index] + local, num_groups


def checked_positions(
    logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`grouped_positions` after checking that every grouped token has a logit predicting it,
    plus (N,) bool: is the token its group's last.

    Args:
        logits: (B, T, V); ``logits[:, k]`` predicts ``ids[:, k + 1]``.
        ids: (B, T) int64 token ids.
        groups: (B, T) int64 group of each token in its example, -1 outside every group.

    Raises:
        ValueError: a grouped token sits at position 0 (nothing predicts it), or shapes disagree.
    """
    if logits.shape[:2] != ids.shape or ids.shape != groups.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, ids {tuple(ids.shape)} and groups {tuple(groups.shape)} "
            "must agree on (B, T)"
        )
    batch_index, position, group, num_groups = grouped_positions(groups)
    if (position == 0).any():
        raise ValueError(
            "a grouped token sits at position 0, so no logit predicts it; keep at least one prompt token "
            "(or a BOS token) before the completion"
        )
    is_last = torch.ones_like(group, dtype=torch.bool)
    is_last[:-1] = group[1:] != group[:-1]
    return batch_index, position, group, num_groups, is_last


def check_same_groups(student_groups: int, teacher_groups: int) -> None:
    """Raise unless both sides have the same number of groups (they must come from the same alignments)."""
    if student_groups != teacher_groups:
        raise ValueError(
            f"the student side has {student_groups} groups and the teacher side {teacher_groups}; "
            "both must come from the same alignments"
        )


def reduction_dtype(logits: torch.Tensor) -> torch.dtype:
    """What rows and terms of ``logits`` are computed in: float32 for bf16 / fp16, their own dtype when wider."""
    return torch.promote_types(logits.dtype, torch.float32)


def _upcast_rows(flat_logits: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, V) rows ``rows`` (n,) of the (B·T, V) flattened logits, upcast to :func:`reduction_dtype`, then
    divided by the temperature (a bf16 ``x / 0.7`` would be off by up to 2^-9 of x).

    ``index_select``, not advanced indexing: its backward is an index_add, much cheaper on CPU than
    advanced indexing's index_put.
    """
    picked = flat_logits.index_select(0, rows).to(reduction_dtype(flat_logits))  # (n, V)
    return picked if temperature == 1.0 else picked / temperature


# values upcast at once by the log-normalizer: 2^24, 64 MiB of float32 per block of rows
_BLOCK_VALUES = 1 << 24


def _blocks(count: int, width: int) -> list[slice]:
    size = max(1, _BLOCK_VALUES // max(width, 1))
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


class _NextTokenLogprobs(torch.autograd.Function):
    """(N,) log-partition of selected rows of the logits over a temperature, and (N,) log-probability of
    the token each row predicts, both in :func:`reduction_dtype`.

    ``torch.logsumexp`` on bf16 logits rounds its result to bf16, and upcasting the logits first would
    keep a float32 (B·T, V) copy for backward. Here the selected rows are upcast a block at a time in
    both directions; backward keeps only the logits (already in memory) and (N,) vectors, recomputes
    each block's softmax, and adds the token's own term to it in float32 before the one cast back: at a
    confident row's token the two nearly cancel, and autograd adding them after two bf16 roundings was
    22 % off there (the span term's gradient on one measured batch).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, flat_logits: torch.Tensor, rows: torch.Tensor,
                tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        dtype = reduction_dtype(flat_logits)
        log_normalizer = torch.empty(rows.shape[0], dtype=dtype, device=flat_logits.device)  # (N,)
        for block in _blocks(rows.shape[0], flat_logits.shape[-1]):
            log_normalizer[block] = torch.logsumexp(_upcast_rows(flat_logits, rows[block], temperature), dim=-1)
        token_logprob = flat_logits[rows, tokens].to(dtype) / temperature - log_normalizer  # (N,)
        ctx.save_for_backward(flat_logits, rows, tokens, log_normalizer)
        ctx.temperature = temperature  # type: ignore[attr-defined]
        return log_normalizer, token_logprob

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_normalizer: torch.Tensor,
                 grad_token: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # fmt: skip
        flat_logits, rows, tokens, log_normalizer = ctx.saved_tensors  # type: ignore[attr-defined]
        temperature: float = ctx.temperature  # type: ignore[attr-defined]
        grad_logits = torch.zeros_like(flat_logits)  # (B·T, V)
        # rows whose scalars reach the loss: the rows of last tokens only do through the span term (the
        # chain-rule rows take their normalizer's gradient themselves, :class:`_ChainRows`)
        active = torch.nonzero((grad_normalizer != 0) | (grad_token != 0)).squeeze(1)  # (n,)
        for block in _blocks(active.shape[0], flat_logits.shape[-1]):
            keep = active[block]
            # d logsumexp(x / τ) / dx = softmax(x / τ) / τ; the token's log-probability adds one-hot / τ
            # and takes the softmax away
            probs = (_upcast_rows(flat_logits, rows[keep], temperature) - log_normalizer[keep, None]).exp_()
            probs.mul_(((grad_normalizer[keep] - grad_token[keep]) / temperature).unsqueeze(1))
            probs.scatter_add_(1, tokens[keep, None], (grad_token[keep] / temperature).unsqueeze(1))
            grad_logits.index_add_(0, rows[keep], probs.to(flat_logits.dtype))
        return grad_logits, None, None, None


class _ChainRows(torch.autograd.Function):
    """(n, V) chain-rule rows ``x / τ - log_normalizer + prefix`` of selected rows of the logits, in
    :func:`reduction_dtype`, given their (n,) log-normalizers and prefixes.

    Backward recomputes the softmax and sums a row's two gradient parts, each entry's own and the
    normalizer's ``-softmax · Σ grad``, in float32 before the one cast back to the logits' dtype: at a
    confident row's top token they nearly cancel, and autograd adding them after two bf16 roundings was
    36 % off there (the hybrid's gradient on one measured batch). The normalizer gets no gradient here
    (pass it detached); the prefix gets ``Σ grad``.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, flat_logits: torch.Tensor, rows: torch.Tensor,
                log_normalizer: torch.Tensor, prefix: torch.Tensor, temperature: float) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(flat_logits, rows, log_normalizer)
        ctx.temperature = temperature  # type: ignore[attr-defined]
        return _upcast_rows(flat_logits, rows, temperature) - (log_normalizer - prefix).unsqueeze(1)  # (n, V)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, torch.Tensor, None]:
        flat_logits, rows, log_normalizer = ctx.saved_tensors  # type: ignore[attr-defined]
        temperature: float = ctx.temperature  # type: ignore[attr-defined]
        total = grad.sum(dim=-1)  # (n,)
        probs = (_upcast_rows(flat_logits, rows, temperature) - log_normalizer.unsqueeze(1)).exp_()  # (n, V)
        grad_rows = torch.addcmul(grad, probs, total.unsqueeze(1), value=-1.0)  # (n, V)
        if temperature != 1.0:
            grad_rows = grad_rows.div_(temperature)
        grad_logits = torch.zeros_like(flat_logits)  # (B·T, V)
        grad_logits.index_add_(0, rows, grad_rows.to(flat_logits.dtype))
        return grad_logits, None, None, total, None


def index_groups(logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, *,
                 temperature: float = 1.0) -> GroupIndex:  # fmt: skip
    """Per-group scalars of the chain rule, batched (no loop over groups; (N, V) rows only a block at a
    time), in :func:`reduction_dtype` whatever the logits' dtype.

    Args:
        logits: (B, T, V) logits; ``logits[:, k]`` predicts ``ids[:, k + 1]``.
        ids: (B, T) int64 token ids.
        groups: (B, T) int64 group of each token in its example, -1 outside every group.
        temperature: logits are divided by it before the softmax.

    Raises:
        ValueError: a grouped token sits at position 0 (nothing predicts it), shapes disagree, or the
            temperature is not positive.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    batch_index, position, group, num_groups, is_last = checked_positions(logits, ids, groups)
    flat = batch_index * logits.shape[1] + position - 1  # (N,) rows of (B*T, V) predicting grouped tokens
    tokens = ids[batch_index, position]
    # log p(x_t | x_<t) of every grouped token as (N,) scalars
    if isinstance(logits, torch.Tensor):
        log_normalizer, token_logprob = _NextTokenLogprobs.apply(logits.flatten(0, 1), flat, tokens, temperature)
    else:  # hidden states and an output layer (gold.losses.hidden): rows made a block at a time
        log_normalizer, token_logprob = logits.token_logprobs(flat, tokens, temperature)
    is_first = torch.ones_like(is_last)
    is_first[1:] = group[1:] != group[:-1]
    prefix = torch.zeros(int(num_groups.sum()), dtype=token_logprob.dtype, device=logits.device)
    prefix = prefix.index_add(0, group[~is_last], token_logprob[~is_last])  # (G,)
    return GroupIndex(
        observed=token_logprob[is_last] + prefix,
        prefix=prefix,
        log_normalizer=log_normalizer[is_last],
        start_normalizer=log_normalizer[is_first],
        example=batch_index[is_last],
        last_position=position[is_last],
        first_position=position[is_first],
        temperature=temperature,
    )


def rows_of(logits: torch.Tensor, index: GroupIndex, select: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """(g, V) chain-rule rows of the selected groups (all by default), in :func:`reduction_dtype`.

    Args:
        logits: (B, T, V) the logits ``index`` was built from (:func:`index_groups`), not yet scaled.
        index: the groups' scalars and temperature.
        select: which groups: (g,) int64 or a slice.
    """
    flat = index.example[select] * logits.shape[1] + index.last_position[select] - 1  # (g,) rows of (B*T, V)
    if not isinstance(logits, torch.Tensor):  # gold.losses.hidden: the rows made from the hidden states
        return logits.log_softmax(flat, index.temperature) + index.prefix[select].unsqueeze(1)  # type: ignore[no-any-return]
    normalizer = index.log_normalizer[select].detach()  # (g,)
    return _ChainRows.apply(logits.flatten(0, 1), flat, normalizer, index.prefix[select], index.temperature)


def group_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, *, temperature: float = 1.0
) -> GroupRows:
    """Chain-rule log-probability rows for every group (see the module docstring).

    Args:
        logits: (B, T, V) logits; ``logits[:, k]`` predicts ``ids[:, k + 1]``.
        ids: (B, T) int64 token ids.
        groups: (B, T) int64 group of each token in its example, -1 outside every group.
        temperature: logits are divided by it before the softmax.

    Returns:
        (G, V) rows with their per-group scalars, in (example, group) order, in :func:`reduction_dtype`.
    """
    index = index_groups(logits, ids, groups, temperature=temperature)
    return GroupRows(rows_of(logits, index), index)


def start_rows(logits: torch.Tensor, index: GroupIndex, select: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """(g, V) next-token log-probabilities at each selected group's *start* (predicting its first token), in
    :func:`reduction_dtype`; ``logits`` as for :func:`rows_of`."""
    flat = index.example[select] * logits.shape[1] + index.first_position[select] - 1  # (g,) rows of (B*T, V)
    if not isinstance(logits, torch.Tensor):  # gold.losses.hidden
        return logits.log_softmax(flat, index.temperature)  # type: ignore[no-any-return]
    normalizer = index.start_normalizer[select].detach()  # (g,)
    return _ChainRows.apply(logits.flatten(0, 1), flat, normalizer, torch.zeros_like(normalizer), index.temperature)


def with_rest_bucket(logprobs: torch.Tensor) -> torch.Tensor:
    """Append the missing mass ``log(1 - Σ exp(row))`` as one more column, so each row sums to 1.

    Args:
        logprobs: (G, V) log-probability rows summing to at most 1.

    Returns:
        (G, V + 1) rows; the last column is ``-inf`` where a row already sums to 1.
    """
    total = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp(max=0.0)  # (G, 1)
    return torch.cat([logprobs, log1mexp(total)], dim=-1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends (Mächler 2012).

    At ``x = 0`` the value is ``-inf`` with a zero (not NaN) gradient: the formula is evaluated on a
    harmless stand-in there and replaced afterwards.
    """
    x = x.clamp(max=0.0)
    inside = x < 0
    safe = torch.where(inside, x, torch.full_like(x, -1.0))
    value = torch.where(safe > -0.6931471805599453, torch.log(-torch.expm1(safe)), torch.log1p(-torch.exp(safe)))
    return torch.where(inside, value, torch.full_like(value, float("-inf")))
