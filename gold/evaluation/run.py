"""What ``gold eval`` runs: score students (and their checkpoints) against a teacher on a held-out set.

Every figure is per UTF-8 byte of the completions, so models with different tokenizers are compared
in one unit: bits per byte of each model, and for each student the teacher→student KL per byte
(exact, from group log-likelihoods on shared boundaries) with next-byte agreement at group starts
(:mod:`gold.evaluation.agreement`). Task accuracy is measured when the rows carry an answer field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gold.config import DataConfig, ModelConfig, RolloutConfig
from gold.data.examples import DataError, Example, Messages, distinct_prompts, seam_prompt
from gold.data.files import example_from_row
from gold.evaluation.agreement import AgreementCache, group_agreement
from gold.evaluation.bits_per_byte import LN2, completion_logprobs, contains_answer
from gold.evaluation.own_samples import student_sample_scores
from gold.models.checkpoint import split_checkpoints
from gold.models.zoo import MODEL_TOKENIZERS, load_tokenizer
from gold.rollout import sample_texts, seeded_samples, stop_rate


@dataclass(frozen=True)
class ModelScore:
    """One evaluated model. ``step`` is set for checkpoints; agreement fields only for students."""

    name: str
    role: str
    step: int | None
    bits_per_byte: float
    kl_bits_per_byte: float | None = None
    next_byte_agreement: float | None = None
    next_byte_kl_bits: float | None = None
    accuracy: float | None = None
    stop_rate: float | None = None
    # on the student's own samples (--sample-student): KL(S‖T) per byte and the teacher's bits per byte
    reverse_kl_bits_per_byte: float | None = None
    teacher_bits_per_byte_on_student: float | None = None
    student_sample_accuracy: float | None = None
    student_samples: int | None = None
    student_samples_empty: int | None = None


@dataclass(frozen=True)
class EvalSet:
    """Held-out examples and, when the rows carry them, the rows' prompts and answers for task accuracy."""

    examples: list[Example]
    answers: list[str] | None
    source: str
    prompts: list[str | Messages] | None = None

    @property
    def distinct_prompts(self) -> list[str | Messages]:
        """The prompts of the set, each once, in order."""
        return distinct_prompts(self.prompts if self.prompts is not None else [e.prompt for e in self.examples])

    @property
    def distinct_answers(self) -> list[str] | None:
        """The answers of :attr:`distinct_prompts`, when the rows carry answers."""
        if self.answers is None:
            return None
        prompts = self.prompts if self.prompts is not None else [e.prompt for e in self.examples]
        first: dict[str, str] = {}
        for prompt, answer in zip(prompts, self.answers, strict=True):
            first.setdefault(repr(prompt), answer)
        return list(first.values())

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of all completions: the denominator of every per-byte figure."""
        return sum(len(e.completion.encode("utf-8")) for e in self.examples)


def task_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    answers: Sequence[str],
    *,
    check: Callable[[str, str], bool] = contains_answer,
    max_new_tokens: int = 32,
) -> float:
    """Share of greedy completions that ``check(answer, completion)`` accepts (the hook for verifiable tasks)."""
    config = RolloutConfig(temperature=0.0, max_completion_length=max_new_tokens)
    completions = sample_texts(model, tokenizer, prompts, config)
    return sum(check(a, c) for a, c in zip(answers, completions, strict=True)) / max(len(prompts), 1)


def _prompt_of(row: Mapping[str, Any], where: str) -> str | Messages:
    if "messages" in row:
        turns = tuple(row["messages"])
        return turns[:-1] if turns and turns[-1].get("role") == "assistant" else turns
    if "prompt" in row:
        return seam_prompt(str(row["prompt"]))  # sampled where the model writes a trailing space itself
    if "text" in row:
        return ""
    raise DataError(f"{where} has fields {sorted(row)}; gold eval reads 'prompt', 'messages' or 'text'")


def _example_of(row: Mapping[str, Any], where: str) -> Example:
    """A plain ``text`` row is scored from its start, as text (no end token unless the row says ``"ended": true``);
    other rows are read as for training."""
    if "text" in row and "prompt" not in row and "messages" not in row:
        if not row["text"]:
            raise DataError(f"{where}: the text is empty; drop the row")
        return Example("", str(row["text"]), ended=row.get("ended") is True)
    return example_from_row(row, index=0, config=DataConfig(path="<eval>"), label=where)


def eval_set(
    rows: Sequence[Mapping[str, Any]],
    *,
    answer_field: str | None = None,
    teacher: tuple[Any, Any] | None = None,
    samples_per_prompt: int = 0,
    max_new_tokens: int = 64,
    seed: int = 0,
    labels: Sequence[str] | None = None,
) -> EvalSet:
    """Examples from rows: their own completions, or ``samples_per_prompt`` teacher samples per prompt. ``labels``
    name the rows in errors (``held_out.jsonl line 7``, as :func:`gold.data.files.read_rows` gives them); default
    ``row N``, counted from 1 as lines are."""
    if not rows:
        raise DataError("the evaluation set is empty")
    where = list(labels) if labels is not None else [f"row {index + 1}" for index in range(len(rows))]
    prompts = [_prompt_of(row, where[i]) for i, row in enumerate(rows)]
    answers = None
    if answer_field is not None:
        missing = [where[i] for i, row in enumerate(rows) if answer_field not in row]
        if missing:
            raise DataError(f"{', '.join(missing[:5])} {'has' if len(missing) == 1 else 'have'} no {answer_field!r} "
                            "field for task accuracy")  # fmt: skip
        answers = [str(row[answer_field]) for row in rows]
    if samples_per_prompt <= 0:
        examples = [_example_of(row, where[i]) for i, row in enumerate(rows)]
        return EvalSet(examples, answers, "file", prompts)
    if teacher is None:
        raise DataError("--sample-teacher needs --teacher")
    samples = seeded_samples(teacher[0], teacher[1], prompts, samples_per_prompt=samples_per_prompt,
                             max_new_tokens=max_new_tokens, seed=seed, progress=True)  # fmt: skip
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    # a sample that stopped at once is still an event (log p(end)); one cut with no text has nothing to score
    examples = [Example(p, s.text, ended=s.ended) for p, s in zip(repeated, samples, strict=True) if s.text or s.ended]
    return EvalSet(examples, answers, f"{samples_per_prompt} teacher sample(s) per prompt", prompts)


def checkpoints(run_dir: Path) -> tuple[list[tuple[int, Path]], list[str]]:
    """``(step, path)`` of every whole ``checkpoint-N`` folder of a training run, by step, and ``path (what is
    wrong)`` for each of the others (:func:`gold.models.checkpoint.verify_checkpoint`)."""
    if not run_dir.is_dir():
        raise DataError(f"--checkpoints {str(run_dir)!r} is not a folder; give a training output_dir")
    whole, broken = split_checkpoints(run_dir)
    notes = [f"{path} ({why})" for _, path, why in broken]
    if not whole and not notes:
        raise DataError(f"{run_dir} holds no checkpoint-N folders (set training.save_steps to keep some)")
    if not whole:
        raise DataError(f"{run_dir} holds no whole checkpoint: {', '.join(notes)}")
    return whole, notes


def load_scored_model(spec: str, *, dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a zoo model name or a local folder (a checkpoint carries its tokenizer)."""
    from gold.models.build import build_model

    tokenizer = load_tokenizer(MODEL_TOKENIZERS.get(spec, spec))
    model = build_model(ModelConfig(model=spec, dtype=dtype or "auto"), tokenizer, seed=0)
    return model.eval(), tokenizer


def bits_per_byte(
    model: Any, tokenizer: Any, examples: Sequence[Example], *, batch_size: int = 8, progress: str | None = None
) -> float:
    """A model's bits per UTF-8 byte of the completions of ``examples`` (with the end token of those that ended)."""
    logprobs = completion_logprobs(model, tokenizer, [e.prompt for e in examples], [e.completion for e in examples],
                                   ended=[e.ended for e in examples], batch_size=batch_size,
                                   progress=progress)  # fmt: skip
    num_bytes = sum(len(e.completion.encode("utf-8")) for e in examples)
    return float(-logprobs.sum()) / num_bytes / LN2


def score_model(
    name: str,
    model_and_tokenizer: tuple[Any, Any],
    data: EvalSet,
    *,
    role: str,
    step: int | None = None,
    teacher: tuple[Any, Any] | None = None,
    cache: AgreementCache | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    stop_samples: int = 1,
    student_samples: int = 0,
    seed: int = 0,
) -> ModelScore:
    """Every figure of one model on ``data`` (agreement only when a teacher is given and ``role`` is student).

    Pass one ``cache`` for all students scored against the same teacher and data: the pair tables and the
    teacher's forwards are then computed once. ``stop_samples`` samples per prompt (temperature 1, seeded,
    ``max_new_tokens`` long) give the model's stop rate: the share that ends with a stop id within the limit.
    ``student_samples`` > 0 (students, with a teacher) scores that many of the student's own samples per prompt
    in the other direction (:func:`gold.evaluation.own_samples.student_sample_scores`); its stop rate is then theirs.
    """
    model, tokenizer = model_and_tokenizer
    score: dict[str, Any] = {"name": name, "role": role, "step": step}
    if teacher is not None and role == "student":
        agreement = group_agreement(model, tokenizer, teacher[0], teacher[1], data.examples, batch_size=batch_size,
                                    cache=cache, progress=f"{name}: agreement")  # fmt: skip
        score |= {"bits_per_byte": agreement.student_bits_per_byte,
                  "kl_bits_per_byte": agreement.kl_bits_per_byte,
                  "next_byte_agreement": agreement.next_byte_agreement,
                  "next_byte_kl_bits": agreement.next_byte_kl_bits}  # fmt: skip
    else:
        score["bits_per_byte"] = bits_per_byte(model, tokenizer, data.examples, batch_size=batch_size,
                                               progress=f"{name}: bits/byte")  # fmt: skip
    if data.answers is not None:
        prompts = data.prompts if data.prompts is not None else [e.prompt for e in data.examples]
        score["accuracy"] = task_accuracy(model, tokenizer, prompts, data.answers, max_new_tokens=max_new_tokens)
    if student_samples > 0 and teacher is not None and role == "student":
        own = student_sample_scores(model, tokenizer, teacher[0], teacher[1], data.distinct_prompts,
                                    samples_per_prompt=student_samples, max_new_tokens=max_new_tokens, seed=seed,
                                    answers=data.distinct_answers, batch_size=batch_size)  # fmt: skip
        score |= {"reverse_kl_bits_per_byte": own.reverse_kl_bits_per_byte, "stop_rate": own.stop_rate,
                  "teacher_bits_per_byte_on_student": own.teacher_bits_per_byte,
                  "student_sample_accuracy": own.accuracy, "student_samples": own.num_samples,
                  "student_samples_empty": own.num_empty}  # fmt: skip
    elif stop_samples > 0:
        score["stop_rate"] = model_stop_rate(model, tokenizer, data.distinct_prompts, samples=stop_samples,
                                             max_new_tokens=max_new_tokens, seed=seed)  # fmt: skip
    return ModelScore(**score)


def model_stop_rate(
    model: Any, tokenizer: Any, prompts: Sequence[str | Messages], *, samples: int, max_new_tokens: int, seed: int = 0
) -> float:
    """Share of a model's samples (temperature 1, ``samples`` per prompt) that stop within ``max_new_tokens``."""
    prompts = [seam_prompt(p) for p in prompts]
    return stop_rate(seeded_samples(model, tokenizer, prompts, samples_per_prompt=samples,
                                    max_new_tokens=max_new_tokens, seed=seed))  # fmt: skip


def format_table(scores: Sequence[ModelScore]) -> str:
    """A fixed-width table, one line per model; the student-sample columns only when measured."""

    def cell(value: float | None, spec: str) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    both = any(s.reverse_kl_bits_per_byte is not None for s in scores)
    header = f"{'model':<34}{'step':>6}{'bits/byte':>11}{'KL(T‖S) b/B':>13}{'next-byte agree':>17}{'next-byte KL':>14}"
    header += f"{'accuracy':>10}{'stops':>8}"
    if both:
        header += f"{'KL(S‖T) b/B':>13}{'T b/B of S':>12}{'acc of S':>10}"
    lines = [header]
    for s in scores:
        line = (
            f"{s.name[-34:]:<34}{'' if s.step is None else s.step:>6}{cell(s.bits_per_byte, '.3f'):>11}"
            f"{cell(s.kl_bits_per_byte, '.3f'):>13}{cell(s.next_byte_agreement, '.1%'):>17}"
            f"{cell(s.next_byte_kl_bits, '.3f'):>14}{cell(s.accuracy, '.0%'):>10}{cell(s.stop_rate, '.0%'):>8}"
        )
        if both:
            line += (
                f"{cell(s.reverse_kl_bits_per_byte, '.3f'):>13}{cell(s.teacher_bits_per_byte_on_student, '.3f'):>12}"
                f"{cell(s.student_sample_accuracy, '.0%'):>10}"
            )
        lines.append(line)
    if both:
        lines.append("KL(T‖S): on the data's completions; KL(S‖T), T b/B of S, acc of S and stops: on each student's "
                     "own samples")  # fmt: skip
    return "\n".join(lines)


def write_json(path: Path, scores: Sequence[ModelScore], data: EvalSet, extra: Mapping[str, Any]) -> None:
    payload = {**extra, "completions": data.source, "num_examples": len(data.examples), "num_bytes": data.num_bytes,
               "models": [asdict(s) for s in scores]}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_plot_path(path: Path) -> None:
    """Raises ``ValueError`` naming ``path`` when matplotlib cannot write its format (known by the suffix; none: PNG),
    so that ``--plot`` fails before the scoring, not after it."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix and path.suffix[1:].lower() not in formats:
        raise ValueError(f"--plot {str(path)!r}: matplotlib writes no {path.suffix!r} files; end the name with one of "
                         f"{', '.join('.' + name for name in sorted(formats))}")  # fmt: skip


def plot_steps(path: Path, scores: Sequence[ModelScore]) -> None:
    """KL per byte and bits per byte of the checkpoints against their step; other students as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = [s for s in scores if s.role == "student"]
    steps = sorted((s for s in students if s.step is not None), key=lambda s: s.step or 0)
    panels = [("kl_bits_per_byte", "KL(teacher‖student), bits/byte\n(data completions)")]
    if any(s.reverse_kl_bits_per_byte is not None for s in students):
        panels.append(("reverse_kl_bits_per_byte", "KL(student‖teacher), bits/byte\n(student samples)"))
    panels.append(("bits_per_byte", "student bits/byte"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for axis, (field, label) in zip(axes, panels, strict=True):
        values = [getattr(s, field) for s in steps]
        if steps and all(v is not None for v in values):
            axis.plot([s.step for s in steps], values, marker="o", label="checkpoints")
        for other in (s for s in students if s.step is None and getattr(s, field) is not None):
            axis.axhline(getattr(other, field), linestyle="--", linewidth=1, label=other.name[-30:])
        axis.set_xlabel("training step")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
