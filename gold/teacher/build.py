"""The teacher a recipe names (local model, server, cache) and ``gold teacher-cache build``."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gold.config import GoldConfig, ModelConfig
from gold.data import Example, prompt_ids
from gold.data_files import Rows
from gold.models import build_model, build_tokenizer
from gold.teacher.cache import (
    CachedTeacher,
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

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def model_identity(spec: ModelConfig, *, seed: int = 0) -> str:
    """What names a teacher for a cache: a local folder by a fingerprint of its config and weight files (their names,
    sizes, first and last MiB: cheap for large checkpoints, different for any retrained one); a zoo name or hub id by
    itself; a ``tiny`` random model by its tokenizer, sizes and seed."""
    if spec.model == "tiny":
        return f"tiny:{spec.tokenizer}:{sorted(spec.tiny.items())}:seed={seed}"
    return folder_identity(Path(spec.model)) if Path(spec.model).is_dir() else f"model:{spec.model}"


def folder_identity(folder: Path) -> str:
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))
    return f"folder:{digest.hexdigest()[:16]}"


def served_identity(teacher: ServedTeacher) -> str:
    """A served teacher's identity: its folder's when the server's model id is a folder this machine sees (so a cache
    built from the server and one built from the folder agree), else the served model's name."""
    folder = Path(teacher.model)
    return folder_identity(folder) if folder.is_dir() else f"model:{teacher.model}"


def build_teacher(spec: ModelConfig, tokenizer: Any, *, device: str | None, seed: int) -> Any:
    """The teacher of a recipe's ``teacher`` section: a served one (``server_url``), a cache (``cache``; the model or
    server asked on a miss, loaded on the first miss), or a local model."""
    server_url, cache = getattr(spec, "server_url", None), getattr(spec, "cache", None)

    def local() -> LocalTeacher:
        return LocalTeacher(build_model(spec, tokenizer, seed=seed), tokenizer, device=device,
                            shard=getattr(spec, "shard", False))  # fmt: skip

    served = _served(spec, tokenizer) if server_url else None
    if cache is None:
        return served or local()
    live: Callable[[], Any] | None = (lambda: served) if served else (local if spec.model else None)
    identity = served_identity(served) if served else (model_identity(spec, seed=seed) if spec.model else None)
    return CachedTeacher(TeacherCache(cache), tokenizer, identity=identity, top_k=spec.top_k, fallback=live,  # type: ignore[attr-defined]
                         on_miss=spec.cache_miss)  # type: ignore[attr-defined]  # fmt: skip


def _served(spec: Any, tokenizer: Any) -> ServedTeacher:
    return ServedTeacher(spec.server_url, tokenizer, top_k=spec.top_k, timeout=spec.timeout,
                         max_concurrency=spec.max_concurrency, retries=spec.retries)  # fmt: skip


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
    from gold.collate import Collator
    from gold.losses import PairTables
    from gold.run import training_arguments, training_examples
    from gold.stops import stop_rule

    spec = config.teacher
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
    teacher = _served(spec, teacher_tokenizer) if getattr(spec, "server_url", None) else None
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
