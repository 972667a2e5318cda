"""Chain-rule group rows against the loop reference, on values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from gold.losses import group_logprobs, with_rest_bucket
from gold.losses.merge import start_rows
from tests.reference import reference_group_rows


def random_groups(batch: int, length: int, *, seed: int) -> torch.Tensor:
    """Groups of 1–3 tokens after a 1–4 token prefix, with -1 padding at the end of some rows."""
    gen = torch.Generator().manual_seed(seed)
    groups = torch.full((batch, length), -1, dtype=torch.int64)
    for b in range(batch):
        t = int(torch.randint(1, min(5, length), (1,), generator=gen))
        end = max(t + 1, length - int(torch.randint(0, 6, (1,), generator=gen)))
        g = 0
        while t < end:
            size = int(torch.randint(1, 4, (1,), generator=gen))
            groups[b, t : min(t + size, end)] = g
            t += size
            g += 1
    return groups


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("batch", "length", "vocab"), [(3, 47, 123), (1, 5, 7), (4, 16, 2)])
def test_rows_match_reference_values_and_gradients(batch: int, length: int, vocab: int, temperature: float) -> None:
    """Rows, observed columns and start rows, whose backward passes are written by hand (merge's
    autograd Functions), against the loop reference on the scaled logits."""
    gen = torch.Generator().manual_seed(batch * 100 + vocab)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    groups = random_groups(batch, length, seed=vocab)
    rows = group_logprobs(logits, ids, groups, temperature=temperature)
    starts = start_rows(logits, rows.index)
    expected = reference_group_rows(logits / temperature, ids, groups)
    expected_observed = expected.gather(1, ids[rows.index.example, rows.index.last_position][:, None])[:, 0]
    expected_starts = (logits[rows.index.example, rows.index.first_position - 1] / temperature).log_softmax(-1)
    torch.testing.assert_close(rows.logprobs, expected)
    torch.testing.assert_close(rows.observed, expected_observed)
    torch.testing.assert_close(starts, expected_starts)
    weights, observed_weights, start_weights = (
        torch.randn_like(expected),
        torch.randn(expected.shape[0], dtype=torch.float64),
        torch.randn_like(expected_starts),
    )

    def total(row_values: torch.Tensor, observed: torch.Tensor, start_values: torch.Tensor) -> torch.Tensor:
        return (row_values * weights).sum() + (observed * observed_weights).sum() + (start_values * start_weights).sum()

    (grad,) = torch.autograd.grad(total(rows.logprobs, rows.observed, starts), logits)
    (expected_grad,) = torch.autograd.grad(total(expected, expected_observed, expected_starts), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_observed_column_is_the_group_log_likelihood() -> None:
    logits = torch.randn(2, 9, 11, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 9))
    groups = random_groups(2, 9, seed=3)
    rows = group_logprobs(logits, ids, groups)
    last_ids = ids[rows.index.example, rows.index.last_position]
    torch.testing.assert_close(rows.observed, rows.logprobs.gather(1, last_ids[:, None])[:, 0])


def test_hand_computed_two_token_group() -> None:
    # one example: prompt token, then a two-token group "a b" (ids 1, 2)
    logits = torch.log(torch.tensor([[[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [1.0, 1.0, 1.0]]], dtype=torch.float64))
    ids = torch.tensor([[0, 1, 2]])
    groups = torch.tensor([[-1, 0, 0]])
    rows = group_logprobs(logits, ids, groups)
    # p(a) = 0.6 from position 0; then row = 0.6 × p(· | a) = 0.6 × [0.2, 0.2, 0.6]
    torch.testing.assert_close(rows.logprobs.exp(), torch.tensor([[0.12, 0.12, 0.36]], dtype=torch.float64))
    assert math.isclose(float(rows.observed.exp()), 0.36)
    completed = with_rest_bucket(rows.logprobs).exp()
    torch.testing.assert_close(completed.sum(-1), torch.ones(1, dtype=torch.float64))


def test_identity_rows_are_log_softmax() -> None:
    logits = torch.randn(2, 6, 9, dtype=torch.float64)
    ids = torch.randint(0, 9, (2, 6))
    groups = torch.tensor([[-1, 0, 1, 2, 3, 4], [-1, -1, 0, 1, 2, -1]])
    rows = group_logprobs(logits, ids, groups).logprobs
    expected = torch.cat([logits[0, 0:5].log_softmax(-1), logits[1, 1:4].log_softmax(-1)])
    torch.testing.assert_close(rows, expected)


def test_grouped_token_at_position_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="position 0"):
        group_logprobs(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.int64), torch.tensor([[0, 1, 1]]))


def test_empty_groups_give_no_rows() -> None:
    rows = group_logprobs(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64), torch.full((2, 3), -1))
    assert rows.logprobs.shape == (0, 4) and rows.observed.shape == (0,)
