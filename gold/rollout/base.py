"""What every sampler shares: the :class:`Generator` seam, what it returns, and the ids it may sample."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from alignment import token_bytes_table


@dataclass(frozen=True)
class Rollout:
    """One sampled completion.

    Attributes:
        ids: the completion's token ids, cut after the first stop id (kept as the last id); a completion without
            a stop id was cut by the length limit.
        logprobs: the engine's log-probability of each id under the model's raw distribution (before
            temperature, top-p/top-k and masking), when the engine reports them (vLLM); None otherwise.
    """

    ids: list[int]
    logprobs: list[float] | None = None


class Generator(Protocol):
    """Samples completions: ``num_generations`` per prompt, in prompt order.

    ``seeds`` (one per prompt) make each prompt's samples independent of the rest of the call; a sampler
    that cannot seed per request (HF ``generate``) draws from the global RNG, which the trainer seeds per step.
    """

    def rollout(self, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int] | None = None) -> list[Rollout]: ...


def rollout_seed(*parts: int | str) -> int:
    """A sampling seed from its parts (run seed, step, slice, process, row): the same on every machine and
    after a resume, and far apart for neighbouring rows (vLLM seeds the k-th sample of a request ``seed + k``)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def spellable_ids(tokenizer: Any, num_rows: int, stop_ids: Sequence[int] = ()) -> torch.Tensor:
    """(num_rows,) bool: embedding rows that may be sampled: text tokens of ``tokenizer`` and its stop ids.

    Rows past the tokenizer (a rounded-up vocabulary), holes in its id space and non-stop special tokens
    spell no bytes: the other model would never see them while the sampler's own context held them.
    """
    table = token_bytes_table(tokenizer)
    allowed = np.zeros(num_rows, dtype=bool)
    size = min(num_rows, table.vocab_size)
    allowed[:size] = table.known_mask[:size] & ~table.special_mask[:size]
    stops = np.asarray([i for i in stop_ids if i < num_rows], dtype=np.int64)
    allowed[stops] = True
    return torch.from_numpy(allowed)


def logprob_gap(
    student_logits: torch.Tensor, targets: torch.Tensor, engine_logprobs: Sequence[Sequence[float]]
) -> tuple[float, int]:
    """Sum and count of ``|log p_engine − log p_student|`` over the sampled tokens of each row.

    Args:
        student_logits: (B, L, V) the student's raw logits of the loss view (``logits[:, j]`` predicts
            ``targets[:, j]``).
        targets: (B, L - 1) the completion ids, -100 on padding.
        engine_logprobs: per row, the engine's raw log-prob of each sampled id (NaN where it gave none); a row's
            completion ids are a prefix of what the engine sampled.
    """
    with torch.no_grad():
        if isinstance(student_logits, torch.Tensor):
            logits = student_logits[:, : targets.shape[1]].float()
            picked = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
        else:  # hidden states (gold.losses.hidden)
            picked = student_logits.completion_logprobs(targets)
        total, count = 0.0, 0
        for row, engine in enumerate(engine_logprobs):
            width = min(len(engine), int((targets[row] >= 0).sum()))
            reference = torch.tensor(engine[:width], dtype=torch.float32, device=picked.device)
            diff = (reference - picked[row, :width]).abs()
            known = ~torch.isnan(diff)
            total += float(diff[known].sum())
            count += int(known.sum())
    return total, count
