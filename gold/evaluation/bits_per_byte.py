"""Tokenizer-independent evaluation: bits per byte, and KL per byte in both directions.

A model's log-likelihood of a completion is the sum of its token log-probabilities, whatever its
tokenizer; divided by the completion's UTF-8 bytes it is comparable across vocabularies. On
completions sampled from the teacher, the mean of ``log p_T(y|x) − log p_S(y|x)`` is a Monte-Carlo
estimate of the sequence-level KL(teacher‖student); per byte, it is the distillation gap in one
unit for any pair of tokenizers. (Each model scores its own canonical tokenization of the bytes,
which is what it would produce; the probability of other tokenizations of the same bytes is left
out, as in every per-token metric.)

The other direction, :func:`student_sample_scores`: on completions sampled from the *student*, the mean
of ``log p_S(y|x) − log p_T(y|x)`` per byte estimates KL(student‖teacher), what on-policy distillation
minimises, beside the teacher's bits per byte of the student's text and the student's stop rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment import encode_continuation
from gold.data.examples import Example, Messages, pad_id, prompt_ids, seam_prompt, side_inputs
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


@dataclass(frozen=True)
class StudentSampleScores:
    """What the student writes, scored by the teacher: figures per UTF-8 byte of the student's own samples.

    Off-policy forward KL per byte on teacher samples is what SFT optimises directly; on-policy distillation
    targets the student's own text, so it is measured there too (DESIGN §4, GKD-style evaluation).

    Attributes:
        reverse_kl_bits_per_byte: ``Σ (log p_S(y) − log p_T(y)) / bytes`` over the samples y: a Monte-Carlo
            estimate of KL(student‖teacher) per byte, from exact group log-likelihoods on shared boundaries
            (the end token of a sample that stopped included). None when every sample is empty.
        teacher_bits_per_byte: the teacher's bits per byte of the student's text (None likewise).
        student_bits_per_byte: the student's own bits per byte of it (None likewise).
        stop_rate: share of samples that stopped within the length limit.
        accuracy: share of samples ``check(answer, text)`` accepts, when answers were given.
        num_samples: samples drawn; num_empty: of them, with no text (counted, never divided by).
        num_bytes: UTF-8 bytes of all samples.
    """

    reverse_kl_bits_per_byte: float | None
    teacher_bits_per_byte: float | None
    student_bits_per_byte: float | None
    stop_rate: float
    accuracy: float | None
    num_samples: int
    num_empty: int
    num_bytes: int


def student_sample_scores(
    student: Any,
    student_tokenizer: Any,
    teacher: Any,
    teacher_tokenizer: Any,
    prompts: Sequence[str | Messages],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 64,
    seed: int = 0,
    answers: Sequence[str] | None = None,
    check: Callable[[str, str], bool] | None = None,
    batch_size: int = 8,
) -> StudentSampleScores:
    """Sample ``samples_per_prompt`` completions per prompt from the student (temperature 1, seeded, the
    training rules for stop ids and special tokens) and score them with both models.

    Args:
        student / teacher: causal LMs; student_tokenizer / teacher_tokenizer: theirs (any two families).
        prompts: P prompts (text or chat turns), each rendered by each model in its own format.
        samples_per_prompt: N samples per prompt.
        max_new_tokens: sampling length limit (a sample that reaches it did not stop).
        seed: sampling seed; the global RNG is left as it was.

    Each sample is re-tokenized canonically on both sides (as every text is scored here), so the student's figure
    is the probability of its canonical tokenization of the bytes it wrote, not of the exact token path it sampled.
        answers: P answers for task accuracy on the same samples (``check(answer, text)``, default: the answer
            appears in the text).
        batch_size: examples per scoring forward.
    """
    from gold.evaluation.agreement import group_agreement  # agreement builds on this module's sequence_logprobs
    from gold.rollout import seeded_samples

    # sampled and scored after the same prompt: a trailing space belongs to the text the model writes
    prompts = [seam_prompt(p) for p in prompts]
    samples = seeded_samples(student, student_tokenizer, prompts, samples_per_prompt=samples_per_prompt,
                             max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)  # fmt: skip
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    # an empty sample that stopped is still an event (log p(end) on both sides); one that did not has nothing
    scored = [Example(p, s.text, ended=s.ended) for p, s in zip(repeated, samples, strict=True) if s.text or s.ended]
    num_bytes = sum(len(s.text.encode("utf-8")) for s in samples)
    reverse = teacher_bpb = student_bpb = None
    if num_bytes:
        agreement = group_agreement(student, student_tokenizer, teacher, teacher_tokenizer, scored,
                                    batch_size=batch_size)  # fmt: skip
        reverse = -agreement.kl_bits_per_byte
        teacher_bpb, student_bpb = agreement.teacher_bits_per_byte, agreement.student_bits_per_byte
    accuracy = None
    if answers is not None:
        accept = check or contains_answer
        expected = [a for a in answers for _ in range(samples_per_prompt)]
        accuracy = sum(accept(a, s.text) for a, s in zip(expected, samples, strict=True)) / len(samples)
    return StudentSampleScores(
        reverse_kl_bits_per_byte=reverse, teacher_bits_per_byte=teacher_bpb, student_bits_per_byte=student_bpb,
        stop_rate=sum(s.ended for s in samples) / len(samples), accuracy=accuracy, num_samples=len(samples),
        num_empty=sum(not s.text for s in samples), num_bytes=num_bytes,
    )  # fmt: skip
