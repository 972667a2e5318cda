"""``gold teacher-cache build | info``: the command line of :mod:`gold.teacher.cache`, and the build of a cache from a
recipe (the training run's teacher sequences, through the run's collator)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gold.cli.checks import CommandError, writable_dir
from gold.cli.recipe import RecipeError, load_recipe
from gold.config import GoldConfig
from gold.data.batch import PairTables
from gold.data.collate import Collator
from gold.data.examples import DataError, Example, prompt_ids
from gold.data.files import Rows, training_examples
from gold.models.build import build_model, build_tokenizer
from gold.models.stops import stop_rule
from gold.models.zoo import ZooPackageMissing
from gold.teacher.build import model_identity, served_identity, served_teacher
from gold.teacher.cache import (
    CacheInfo,
    CacheWriter,
    TeacherCache,
    completion_columns,
    prompt_key,
    sequence_key,
    tokenizer_fingerprint,
)
from gold.teacher.local import LocalTeacher
from gold.teacher.served import ServedTeacher, real_sequences
from gold.teacher.sparse import SparseRows, next_token_ids, top_k_rows
from gold.training.arguments import training_arguments


def run_teacher_cache(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            writable_dir(args.out, "--out")
            cache = build_cache(load_recipe(args.recipe, args.overrides), args.out, top_k=args.top_k,
                                batch_size=args.batch_size, seq_kd_samples=args.seq_kd_samples)  # fmt: skip
        else:
            cache = TeacherCache(args.folder)
    except (RecipeError, DataError, ZooPackageMissing, ValueError, ImportError, OSError, RuntimeError) as err:
        raise CommandError(f"gold teacher-cache {args.action}: {err}") from None
    tokens = cache.tokens()
    print(f"teacher cache {cache.folder}: {len(cache)} sequences, {tokens} completion tokens, K={cache.info.top_k}, "
          f"teacher {cache.info.teacher}, {cache.size_bytes() / max(tokens, 1):.0f} bytes per token")  # fmt: skip
    return 0


def sparse_rows(teacher: Any, inputs: Any, top_k: int) -> SparseRows:
    """A teacher's top-K rows (plus actual tokens) for a batch side: asked of the server, or from local logits."""
    if isinstance(teacher, ServedTeacher):
        return teacher.rows(inputs)
    logprobs = torch.log_softmax(teacher.logits(inputs).float(), dim=-1)
    return top_k_rows(logprobs, top_k, next_token_ids(inputs.input_ids, inputs.logits_to_keep))


def build_cache(config: GoldConfig, out: Path, *, top_k: int | None = None, batch_size: int = 8,
                seq_kd_samples: int = 0, progress: bool = True) -> TeacherCache:  # fmt: skip
    """Teacher rows for every dataset completion of a recipe into ``out`` (resumable: stored rows are skipped), and
    with ``seq_kd_samples`` N, N teacher samples per prompt (drawn once, with the recipe's rollout temperature and
    ``max_completion_length``; a local teacher samples) and their rows.

    The teacher sequences are the training run's: the recipe's prompts and completions through the same collator (the
    teacher's chat template, its tokenization of the completion bytes, its end token). A row that
    ``rollout.max_completion_length`` cuts is cut at a boundary the student's tokenizer chooses, so another student
    misses it and falls back to the teacher (``teacher.cache_miss``).
    """
    spec = config.teacher
    if spec is None:
        raise ValueError(f"the recipe has teachers: ({', '.join(config.teachers)}); a cache holds one teacher's rows: "
                         "build it from a recipe with that teacher as teacher:")  # fmt: skip
    k = getattr(spec, "top_k", 20) if top_k is None else top_k
    if k == 0 or k < -1:
        raise ValueError(f"--top-k must be -1 (every id) or at least 1, got {k}")
    if getattr(spec, "cache", None):
        raise ValueError(f"teacher.cache is set ({spec.cache!r}): the cache is built from the teacher itself; drop "  # type: ignore[attr-defined]
                         "teacher.cache from the recipe (or override it: teacher.cache=null)")  # fmt: skip
    student_tokenizer, teacher_tokenizer = build_tokenizer(config.student), build_tokenizer(spec)
    examples = training_examples(config)
    if not isinstance(examples, Rows):
        raise ValueError("data.streaming: true cannot be cached (the rows are not counted); set it to false")
    seed = training_arguments(config.training).seed  # `gold train` seeds the run with it, and a tiny teacher with +1
    teacher = served_teacher(spec, teacher_tokenizer) if getattr(spec, "server_url", None) else None
    if teacher is not None:
        teacher.top_k, identity = k, served_identity(teacher)
    else:
        teacher = LocalTeacher(build_model(spec, teacher_tokenizer, seed=seed + 1), teacher_tokenizer)
        identity = model_identity(spec, seed=seed + 1)
    tables = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=len(student_tokenizer),
                              teacher_rows=teacher.num_rows, teacher_stop=teacher.stop,
                              teacher_tail=teacher.tail_column)  # fmt: skip
    rollout = config.rollout
    collator = Collator(student_tokenizer, teacher_tokenizer, tables,
                        max_completion_length=rollout.max_completion_length,
                        max_prompt_length=rollout.max_prompt_length, end_group=config.alignment.end_group,
                        student_stop=stop_rule(student_tokenizer), teacher_stop=teacher.stop)  # fmt: skip
    vocab_rows = teacher.num_rows - 1 if teacher.tail_column is not None else teacher.num_rows
    stop = teacher.stop
    info = CacheInfo(identity, tokenizer_fingerprint(teacher_tokenizer), k, vocab_rows,
                     stop_ids=tuple(sorted(stop.stop_ids)), end_id=stop.end_id)  # fmt: skip
    if seq_kd_samples:
        if isinstance(teacher, ServedTeacher):
            raise ValueError("--seq-kd-samples draws teacher samples with a local teacher: set teacher.model to its "
                             "folder (the served teacher gives log-probs only)")  # fmt: skip
        info = dataclasses.replace(info, samples_per_prompt=seq_kd_samples, sample_temperature=rollout.temperature,
                                   sample_max_tokens=rollout.max_completion_length)  # fmt: skip
        torch.manual_seed(seed)
    writer = CacheWriter(out, info)
    sampler = (
        teacher.generator(dataclasses.replace(rollout, num_generations=seq_kd_samples)) if seq_kd_samples else None
    )
    for chunk in tqdm(list(_chunks(list(examples), batch_size)), desc="teacher cache", unit="batch",
                      disable=not progress):  # fmt: skip
        _cache_chunk(chunk, collator, teacher, writer, identity, k)
        if sampler is not None:
            _cache_samples(chunk, collator, teacher, sampler, writer, identity, k, seq_kd_samples)
    writer.flush()
    return TeacherCache(out)


def _chunks(items: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _cache_chunk(chunk: Sequence[Example], collator: Any, teacher: Any, writer: CacheWriter, identity: str,
                 k: int) -> None:  # fmt: skip
    student_prompts = [prompt_ids(collator.student_tokenizer, e.prompt) for e in chunk]
    teacher_prompts = [prompt_ids(collator.teacher_tokenizer, e.prompt_for_teacher) for e in chunk]
    completions = [collator.from_text(e.completion, index=i, ended=e.ended) for i, e in enumerate(chunk)]
    inputs = collator(student_prompts, teacher_prompts, completions, source="dataset").teacher
    _add_rows(teacher, inputs, writer, identity, k)


def _add_rows(teacher: Any, inputs: Any, writer: CacheWriter, identity: str, k: int) -> None:
    sequences, starts = real_sequences(inputs)
    keys = [sequence_key(identity, k, s, p) for s, p in zip(sequences, starts, strict=True)]
    if all(key in writer.done for key in keys):
        return
    rows = sparse_rows(teacher, inputs, k)
    for b, key in enumerate(keys):
        writer.add(key, *completion_columns(rows, b, len(sequences[b]) - starts[b]))


def _cache_samples(chunk: Sequence[Example], collator: Any, teacher: Any, sampler: Any, writer: CacheWriter,
                   identity: str, k: int, copies: int) -> None:  # fmt: skip
    """Draws ``copies`` teacher samples per prompt of ``chunk`` and stores them with their rows."""
    teacher_prompts = [prompt_ids(collator.teacher_tokenizer, e.prompt_for_teacher) for e in chunk]
    keys = [prompt_key(identity, p) for p in teacher_prompts]
    if all(key in writer.sampled for key in keys):
        return
    sampled = sampler.rollout(teacher_prompts)
    for i, key in enumerate(keys):
        writer.add_samples(key, [r.ids for r in sampled[i * copies : (i + 1) * copies]])
    student_prompts = [prompt_ids(collator.student_tokenizer, e.prompt) for e in chunk]
    completions = [collator.from_teacher_sample(r.ids, index=j) for j, r in enumerate(sampled)]
    batch = collator([p for p in student_prompts for _ in range(copies)], [p for p in teacher_prompts
                     for _ in range(copies)], completions, source="teacher")  # fmt: skip
    _add_rows(teacher, batch.teacher, writer, identity, k)
