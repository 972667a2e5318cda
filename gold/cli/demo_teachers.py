"""Several teachers of different tokenizer families teaching one student (issue 31): the two-domain task.

* teacher ``animals``: ``gold demo``'s animal-sounds teacher (tiny Llama, Mistral-v1 SentencePiece tokenizer),
  fitted as the demo fits it;
* teacher ``addition``: a table of two-digit sums asked four ways ("Add 13 and 14." → "27.",
  :func:`gold.cli.demo_task.sum_prompts`) on a tiny Llama with Llama-3's byte BPE (one token per number), fitted
  the same way;
* student: a random tiny Llama with SmolLM2's byte BPE (a third family; one token per digit, so every sum is a
  shifted group).

Each teacher samples one completion per training prompt of its domain (scarce samples, as with large teachers):
the rows carry its ``teacher_id`` (60 animals rows, 75 addition rows). Held out: each animal and each pair of
numbers asked in a question form never trained on for it, with teacher samples for KL per byte. The arms
(:data:`ARMS`) train copies of one random student from the same start, on the same batches, for the same steps;
:func:`score_student` gives each domain's greedy exact-answer accuracy and KL(teacher‖student) per byte to that
domain's teacher. ``gold demo --teachers 2`` runs the routed arm (:func:`run_teachers_demo`);
``benchmarks/bench_teachers.py`` runs every arm over seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from gold.cli.demo import DemoSettings
from gold.cli.demo_task import Prompt, accuracy, fit_to_task, sum_prompts, task_prompts, teacher_examples
from gold.config import LossConfig, RolloutConfig
from gold.data.examples import Example
from gold.evaluation.run import AgreementCache, EvalSet, score_model
from gold.models.build import tiny_model
from gold.models.zoo import load_tokenizer
from gold.training.baselines import SequenceKDTrainer
from gold.training.console import ConsoleLine
from gold.training.trainer import GoldTrainer

ANIMALS, ADDITION = "animals", "addition"
ROUTED, MIXED, SFT_UNION = "routed gold", "mixed gold (equal weights)", "SFT on the union"
SINGLE = {ANIMALS: "single-teacher gold: animals", ADDITION: "single-teacher gold: addition"}
ARMS = (ROUTED, MIXED, SFT_UNION, *SINGLE.values())


@dataclass(frozen=True)
class TeachersSettings:
    """Sizes and rates of the two-teacher task; the defaults are the harness's (``benchmarks/RESULTS.md``)."""

    student: str = "smollm2"
    animals_tokenizer: str = DemoSettings.teacher  # Mistral-v1 SentencePiece
    addition_tokenizer: str = "llama-3"  # byte BPE, one token per number up to 999
    animals_teacher_steps: int = DemoSettings.teacher_steps
    addition_teacher_steps: int = 300  # batch 32 and lr as the animals teacher's, on 75 prompts against 60
    held_out_samples: int = 4  # teacher samples per held-out prompt (KL per byte)
    steps: int = 400  # every arm, single-teacher ones included (benchmarks/bench_teachers.py, RESULTS.md)
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0  # the teachers' samples, the student's start and the batches
    teacher_seed: int = 0  # the teachers' fits: the same teachers for every seed of the harness


@dataclass(frozen=True)
class Domain:
    """One teacher and its task: its rows for training and its held-out prompts and samples.

    Attributes:
        teacher_id: the rows' ``teacher_id`` and the key of ``teachers=``.
        model, tokenizer: the fitted teacher.
        train: one teacher sample per training prompt, each row naming ``teacher_id``.
        held_prompts: prompts never trained on (accuracy).
        held_out: teacher samples of the held-out prompts (KL per byte).
        teacher_accuracy: the teacher's greedy accuracy on ``held_prompts``.
    """

    teacher_id: str
    model: Any
    tokenizer: Any
    train: list[Example]
    held_prompts: list[Prompt]
    held_out: EvalSet
    teacher_accuracy: float

    @property
    def teacher(self) -> tuple[Any, Any]:
        return self.model, self.tokenizer


def fit_domains(settings: TeachersSettings, *, progress: bool = False, cache: Path | None = None) -> dict[str, Domain]:
    """Both teachers fitted to their tasks (``settings.teacher_seed``), their samples drawn (``settings.seed``).
    ``cache``: a folder where fitted teachers are kept (``<id>-seed<S>-steps<N>.pt``) and reused by later runs."""
    seed, fit_seed = settings.seed, settings.teacher_seed
    animals_tok, addition_tok = load_tokenizer(settings.animals_tokenizer), load_tokenizer(settings.addition_tokenizer)
    (animals_train, animals_held), (addition_train, addition_held) = task_prompts(), sum_prompts()
    animals = _cached(cache, f"{ANIMALS}-seed{fit_seed}-steps{settings.animals_teacher_steps}", tiny_model(
        animals_tok, seed=fit_seed + 1), lambda model: fit_to_task(  # as gold demo fits it
            model, animals_tok, animals_train, steps=settings.animals_teacher_steps, lr=DemoSettings.teacher_lr,
            seed=fit_seed, progress="animals teacher fit" if progress else None))  # fmt: skip
    addition = _cached(cache, f"{ADDITION}-seed{fit_seed}-steps{settings.addition_teacher_steps}", tiny_model(
        addition_tok, seed=fit_seed + 1), lambda model: fit_to_task(
            model, addition_tok, addition_train, steps=settings.addition_teacher_steps, lr=DemoSettings.teacher_lr,
            seed=fit_seed, progress="addition teacher fit" if progress else None))  # fmt: skip
    samples = settings.held_out_samples
    return {ANIMALS: _domain(ANIMALS, animals, animals_tok, animals_train, animals_held, seed=seed, samples=samples),
            ADDITION: _domain(ADDITION, addition, addition_tok, addition_train, addition_held, seed=seed,
                              samples=samples)}  # fmt: skip


def _cached(folder: Path | None, name: str, model: Any, fit: Any) -> Any:
    """``model`` fitted by ``fit(model)``, or its weights loaded from ``folder/name.pt`` when a run kept them."""
    path = None if folder is None else folder / f"{name}.pt"
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    fit(model)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def _domain(teacher_id: str, model: Any, tokenizer: Any, train_prompts: list[Prompt], held_prompts: list[Prompt], *,
            seed: int, samples: int) -> Domain:  # fmt: skip
    torch.manual_seed(seed)
    train = [replace(e, teacher_id=teacher_id) for e in teacher_examples(model, tokenizer, train_prompts, copies=1)]
    held = teacher_examples(model, tokenizer, held_prompts, copies=samples)
    held_out = EvalSet(held, None, f"{samples} teacher samples per held-out prompt", [p.text for p in held_prompts])
    return Domain(teacher_id, model, tokenizer, train, held_prompts, held_out,
                  accuracy(model, tokenizer, held_prompts))  # fmt: skip


def union_rows(domains: dict[str, Domain]) -> list[Example]:
    """Every domain's training rows (each names its teacher): the data of the routed, mixed and SFT arms."""
    return [row for domain in domains.values() for row in domain.train]


def train_arm(arm: str, student: Any, student_tok: Any, domains: dict[str, Domain], settings: TeachersSettings,
              out: Path) -> float:  # fmt: skip
    """Trains ``student`` in place as ``arm`` says (one of :data:`ARMS`); returns the training seconds.

    The routed, mixed and SFT arms train on the union of both domains' rows (the same batches); a single-teacher arm
    on its own domain's rows only, scored by that one teacher (``teacher=``), for the same number of steps.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    args = TrainingArguments(output_dir=str(out), max_steps=settings.steps,
                             per_device_train_batch_size=settings.batch_size, learning_rate=settings.lr,
                             logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, seed=settings.seed,
                             disable_tqdm=True)  # fmt: skip
    single = next((teacher_id for teacher_id, name in SINGLE.items() if name == arm), None)
    if single is not None:
        domain = domains[single]
        teaching: dict[str, Any] = {"teacher": domain.model, "teacher_tokenizer": domain.tokenizer}
        data = domain.train
    else:
        teaching = {"teachers": {teacher_id: domain.teacher for teacher_id, domain in domains.items()}}
        if arm == MIXED:
            teaching["teacher_weights"] = dict.fromkeys(domains, 1.0)
        data = union_rows(domains)
    trainer_cls = SequenceKDTrainer if arm == SFT_UNION else GoldTrainer
    trainer = trainer_cls(student, args=args, train_dataset=data, student_tokenizer=student_tok,
                          loss=LossConfig(beta=0.0), rollout=RolloutConfig(lmbda=0.0, max_completion_length=16),
                          **teaching)  # fmt: skip
    for callback in (PrinterCallback, ProgressCallback, ConsoleLine):
        trainer.remove_callback(callback)
    started = time.perf_counter()
    trainer.train()
    student.eval()
    return time.perf_counter() - started


def score_student(student: Any, student_tok: Any, domains: dict[str, Domain], *, seed: int,
                  caches: dict[str, AgreementCache]) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per domain: greedy exact-answer accuracy on its held-out prompts, KL(teacher‖student) per byte on its
    teacher's held-out samples (``gold eval``'s code) and the stop rate. ``caches``: one per domain, shared by the
    students scored against it."""
    scores = {}
    for teacher_id, domain in domains.items():
        score = score_model(teacher_id, (student, student_tok), domain.held_out, role="student", teacher=domain.teacher,
                            cache=caches.setdefault(teacher_id, AgreementCache()), max_new_tokens=16,
                            seed=seed)  # fmt: skip
        scores[teacher_id] = {"accuracy": accuracy(student, student_tok, domain.held_prompts),
                              "kl_bits_per_byte": score.kl_bits_per_byte, "stop_rate": score.stop_rate}  # fmt: skip
    return scores


def format_domains(rows: dict[str, dict[str, dict[str, float]]], domains: dict[str, Domain]) -> str:
    """A per-domain table: one line per student, accuracy and KL per byte on each domain."""
    head = f"{'student':<32}" + "".join(f"{f'{d} acc':>15}{f'{d} KL b/B':>17}" for d in domains)
    lines = [head]
    for name, scores in rows.items():
        lines.append(f"{name:<32}" + "".join(f"{scores[d]['accuracy']:>15.0%}{scores[d]['kl_bits_per_byte']:>17.3f}"
                                             for d in domains))  # fmt: skip
    teachers = "".join(f"{domain.teacher_accuracy:>15.0%}{'':>17}" for domain in domains.values())
    return "\n".join([*lines, f"{'(teachers)':<32}{teachers}"])


def run_teachers_demo(out: Path, settings: TeachersSettings | None = None) -> int:
    """``gold demo --teachers 2``: fit both teachers, distil them routed per row into one random student, print the
    per-domain table and write ``metrics_teachers.json`` under ``out``; 0 if the student's KL fell on both domains,
    else 1."""
    settings = settings or TeachersSettings()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"· fitting two teachers: {ANIMALS} ({settings.animals_tokenizer}, {settings.animals_teacher_steps} steps),"
          f" {ADDITION} ({settings.addition_tokenizer}, {settings.addition_teacher_steps} steps) …",
          flush=True)  # fmt: skip
    domains = fit_domains(settings, progress=True)
    for domain in domains.values():
        print(f"  {domain.teacher_id}: {len(domain.train)} training rows, held-out accuracy "
              f"{domain.teacher_accuracy:.0%}", flush=True)  # fmt: skip
    student_tok = load_tokenizer(settings.student)
    student = tiny_model(student_tok, seed=settings.seed + 2)
    caches: dict[str, AgreementCache] = {}
    rows = {"before": score_student(student, student_tok, domains, seed=settings.seed, caches=caches)}
    print(f"· training a {settings.student} student routed per row, {settings.steps} steps …", flush=True)
    seconds = train_arm(ROUTED, student, student_tok, domains, settings, out / "routed")
    rows[ROUTED] = score_student(student, student_tok, domains, seed=settings.seed, caches=caches)
    print(f"\nheld-out, per teacher's domain (greedy exact answers; KL(teacher‖student) bits per byte)\n"
          f"{format_domains(rows, domains)}")  # fmt: skip
    improved = all(rows[ROUTED][d]["kl_bits_per_byte"] < rows["before"][d]["kl_bits_per_byte"] for d in domains)
    rows_per_domain = {d: len(domain.train) for d, domain in domains.items()}
    summary = {"settings": asdict(settings), "scores": rows, "train_seconds": seconds, "improved": improved,
               "rows": rows_per_domain,
               "teacher_accuracy": {d: domain.teacher_accuracy for d, domain in domains.items()},
               "seconds": time.perf_counter() - started}  # fmt: skip
    (out / "metrics_teachers.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\nwrote {out / 'metrics_teachers.json'} ({summary['seconds']:.0f} s in all); every arm with baselines "
          "and seeds: python -m benchmarks.bench_teachers")  # fmt: skip
    if not improved:
        print("the routed student's KL to a teacher did NOT fall on its domain: something is wrong")
        return 1
    return 0
