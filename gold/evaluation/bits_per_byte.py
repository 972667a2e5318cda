"""Tokenizer-independent evaluation: bits per byte, and KL per byte in both directions.

A model's log-likelihood of a completion is the sum of its token log-probabilities, whatever its
tokenizer; divided by the completion's UTF-8 bytes it is comparable across vocabularies. On
completions sampled from the teacher, the mean of ``log p_T(y|x) − log p_S(y|x)`` is a Monte-Carlo
estimate of the sequence-level KL(teacher‖student); per byte, it is the distillation gap in one
unit for any pair of tokenizers. (Each model scores its own canonical tokenization of the bytes,
which is what it would produce; the probability of other tokenizations of the same bytes is left
out, as in every per-token metric.)

The other direction, on completions sampled from the *student*, is :mod:`gold.evaluation.own_samples`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment import encode_continuation
from gold.data.examples import Example, Messages, pad_id, prompt_ids, side_inputs
from gold.models.stops import model_stop_rule

LN2 = math.log(2.0)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) float64 sum of ``log p(target)`` over the non-negative targets.

    Args:
        logits: (B, L, V) loss-view logits (:meth:`gold.data.examples.SideInputs.logits`).
        targets: (B, L - 1) ids ``logits[:, :-1]`` predict, -100 on padding (:meth:`SideInputs.completion_targets`).
    """
    predicting = logits[:, :-1]
    picked = predicting.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, L - 1)
    logprobs = (picked - torch.logsumexp(predicting, dim=-1)).double()
    return torch.where(targets >= 0, logprobs, torch.zeros_like(logprobs)).sum(dim=1)


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    completions: Sequence[str],
    *,
    ended: Sequence[bool] | None = None,
    batch_size: int = 32,
    progress: str | None = None,
) -> torch.Tensor:
    """(N,) float64 ``log p(completion | prompt)`` under ``model``, each side rendering its own prompt; for a
    completion that ended, the end token after it is part of the event (``log p(completion, end | prompt)``).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompts: N prompts (text or chat turns).
        completions: N completion texts.
        ended: N flags, True where the completion is whole (default: none ended, the text alone is scored).
        batch_size: examples per forward.
        progress: show a progress bar with this label.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    end_id = model_stop_rule(model, tokenizer).end_id
    flags = list(ended) if ended is not None else [False] * len(completions)
    if any(flags) and end_id is None:
        raise ValueError("completions that ended are scored with the end token, but this tokenizer has none")
    totals = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
        prompt_batch = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        chunk = zip(completions[start : start + batch_size], flags[start : start + batch_size], strict=True)
        completion_batch = [encode_continuation(tokenizer, c) + ([end_id] if end else []) for c, end in chunk]
        side = side_inputs(prompt_batch, completion_batch, pad_id=pad_id(tokenizer)).to(device)
        totals.append(sequence_logprobs(side.logits(model).float(), side.completion_targets()).cpu())
    model.train(was_training)
    return torch.cat(totals) if totals else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class DistillationGap:
    """Teacher→student agreement on teacher-sampled completions, in bits per byte."""

    kl_bits_per_byte: float
    student_bits_per_byte: float
    teacher_bits_per_byte: float
    num_completions: int
    num_bytes: int


def distillation_gap(
    student: Any, student_tokenizer: Any, teacher: Any, teacher_tokenizer: Any, examples: Sequence[Example]
) -> DistillationGap:
    """KL(teacher‖student) per byte on ``examples`` whose completions were sampled from the teacher (the end of
    a completion that stopped is part of the sequence: its probability under each model counts too)."""
    prompts = [e.prompt for e in examples]
    completions = [e.completion for e in examples]
    num_bytes = sum(len(c.encode("utf-8")) for c in completions)
    if num_bytes == 0:
        raise ValueError("distillation_gap needs non-empty completions; got only empty ones")
    ended = [e.ended for e in examples]
    student_lp = completion_logprobs(student, student_tokenizer, prompts, completions, ended=ended)
    teacher_lp = completion_logprobs(teacher, teacher_tokenizer, prompts, completions, ended=ended)
    return DistillationGap(
        kl_bits_per_byte=float((teacher_lp - student_lp).sum()) / num_bytes / LN2,
        student_bits_per_byte=float(-student_lp.sum()) / num_bytes / LN2,
        teacher_bits_per_byte=float(-teacher_lp.sum()) / num_bytes / LN2,
        num_completions=len(examples),
        num_bytes=num_bytes,
    )


def contains_answer(answer: str, completion: str) -> bool:
    """The default accuracy check: the answer appears in the completion (case-insensitive)."""
    return answer.strip().casefold() in completion.casefold()
