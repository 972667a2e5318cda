"""What the student writes, scored by the teacher: KL per byte in the direction on-policy distillation minimises.

On completions sampled from the *student*, the mean of ``log p_S(y|x) − log p_T(y|x)`` per byte estimates
KL(student‖teacher), beside the teacher's bits per byte of the student's text and the student's stop rate (the
teacher's-samples direction is :mod:`gold.evaluation.bits_per_byte`). Both models score exact group
log-likelihoods on shared byte boundaries (:func:`gold.evaluation.agreement.group_agreement`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gold.data.examples import Example, Messages, seam_prompt
from gold.evaluation.agreement import group_agreement
from gold.evaluation.bits_per_byte import contains_answer
from gold.rollout import seeded_samples


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
