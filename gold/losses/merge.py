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
        example: (G,) int64 example of each group.
        last_position: (G,) int64 position of each group's last token.
        first_position: (G,) int64 position of each group's first token.
    """

    observed: torch.Tensor
    prefix: torch.Tensor
    log_normalizer: torch.Tensor
    example: torch.Tensor
    last_position: torch.Tensor
    first_position: torch.Tensor

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


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the temperature (no copy at 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def index_groups(logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor) -> GroupIndex:
    """Per-group scalars of the chain rule, batched (no loop over groups, no (N, V) copy).

    Args:
        logits: (B, T, V) logits, already divided by any temperature; ``logits[:, k]`` predicts
            ``ids[:, k + 1]``.
        ids: (B, T) int64 token ids.
        groups: (B, T) int64 group of each token in its example, -1 outside every group.

    Raises:
        ValueError: a grouped token sits at position 0 (nothing predicts it), or shapes disagree.
    """
    batch_index, position, group, num_groups, is_last = checked_positions(logits, ids, groups)
    # log p(x_t | x_<t) of every grouped token as scalars: the normalizer is a reduction over logits
    # already in memory, and autograd keeps a reference to them rather than a copy
    log_normalizer = torch.logsumexp(logits, dim=-1)[batch_index, position - 1]  # (N,)
    token_logprob = logits[batch_index, position - 1, ids[batch_index, position]] - log_normalizer  # (N,)
    is_first = torch.ones_like(is_last)
    is_first[1:] = group[1:] != group[:-1]
    prefix = torch.zeros(int(num_groups.sum()), dtype=token_logprob.dtype, device=logits.device)
    prefix = prefix.index_add(0, group[~is_last], token_logprob[~is_last])  # (G,)
    return GroupIndex(
        observed=token_logprob[is_last] + prefix,
        prefix=prefix,
        log_normalizer=log_normalizer[is_last],
        example=batch_index[is_last],
        last_position=position[is_last],
        first_position=position[is_first],
    )


def rows_of(logits: torch.Tensor, index: GroupIndex, select: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """(g, V) chain-rule rows of the selected groups (all by default); ``logits`` as for :func:`index_groups`."""
    flat = index.example[select] * logits.shape[1] + index.last_position[select] - 1  # (g,) rows of (B*T, V)
    offset = index.log_normalizer[select] - index.prefix[select]  # (g,)
    # index_select's backward is an index_add, much cheaper on CPU than advanced indexing's index_put
    return logits.flatten(0, 1).index_select(0, flat) - offset.unsqueeze(1)  # (g, V)


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
        (G, V) rows with their per-group scalars, in (example, group) order.
    """
    scaled = scale(logits, temperature)
    index = index_groups(scaled, ids, groups)
    return GroupRows(rows_of(scaled, index), index)


def start_rows(logits: torch.Tensor, index: GroupIndex, select: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """(g, V) next-token log-probabilities at each selected group's *start* (predicting its first token)."""
    rows = logits[index.example[select], index.first_position[select] - 1]
    return rows - torch.logsumexp(rows, dim=-1, keepdim=True)


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
