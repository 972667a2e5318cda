"""A teacher cache: the teacher's sparse rows for every dataset completion, computed once, reused by any student.

Rows are kept in the **teacher's own token space** (its ids, the positions of its tokenization of the completion), so
students with different tokenizers read the same cache: the loss aligns them at train time as it does a live teacher's.
Each sequence is keyed by a hash of (teacher identity, K, the teacher's token ids of prompt + completion, where the
completion starts); the ids are the teacher's tokenization of the prompt and completion bytes, so the same text under
the same teacher finds its row whatever the student. Storage: Arrow IPC files (``shard-*.arrow``), memory-mapped on
read, and ``info.json`` naming the teacher, its tokenizer's fingerprint, K and the logit rows. Per completion token a
row holds K' ≤ K + 1 ids (int32) and log-probabilities (float32): 8·K' bytes before Arrow's offsets.

Temperature is not part of the key: rows are stored at temperature 1 and the loss applies ``loss.teacher_temperature``
as with a live teacher (tempering keeps the order, so the top-K set is the same at every temperature).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gold.config import RolloutConfig
from gold.data.examples import SideInputs
from gold.extras import require
from gold.models.stops import StopRule, stop_rule
from gold.rollout import Generator, Rollout
from gold.teacher.served import real_sequences
from gold.teacher.sparse import SparseRows, dense_rows, stack_rows

CACHE_VERSION = 1


def arrow() -> Any:
    """``pyarrow`` (the cache's storage), imported on first use: it is an extra, ``gold-distill[datasets]``."""
    return require("pyarrow", feature="the teacher cache")


def schemas() -> tuple[Any, Any]:
    """The Arrow schemas of the rows' shards and of the samples' files."""
    pa = arrow()
    rows = pa.schema([("key", pa.string()), ("width", pa.int32()), ("known", pa.int32()),
                      ("ids", pa.list_(pa.int32())), ("logprobs", pa.list_(pa.float32()))])  # fmt: skip
    samples = pa.schema([("key", pa.string()), ("ids", pa.list_(pa.int32()))])
    return rows, samples


class CacheError(ValueError):
    """A teacher cache that cannot serve this run; the message says why and what to do."""


@dataclass(frozen=True)
class CacheInfo:
    """What a cache was built for (``info.json``)."""

    teacher: str
    tokenizer: str
    top_k: int
    vocab_rows: int
    version: int = CACHE_VERSION
    # the teacher's stop ids and end id (its generation config's included): a cached teacher ends sequences as the
    # teacher did when the cache was built
    stop_ids: tuple[int, ...] = ()
    end_id: int | None = None
    # teacher samples (seq_kd) drawn once per prompt, and how they were drawn
    samples_per_prompt: int = 0
    sample_temperature: float | None = None
    sample_max_tokens: int | None = None

    def check(self, other: CacheInfo, folder: Path) -> None:
        """Raise :class:`CacheError` naming the first field where ``other`` (this run's teacher) differs."""
        for name, why in (("version", "a cache from another gold version"), ("tokenizer", "another teacher tokenizer"),
                          ("vocab_rows", "another vocabulary size"), ("teacher", "another teacher"),
                          ("top_k", "another K")):  # fmt: skip
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                raise CacheError(f"teacher cache {folder} was built for {why} ({name} {mine!r}, this run has "
                                 f"{theirs!r}); rebuild it with `gold teacher-cache build` or point teacher.cache "
                                 "at the right folder")  # fmt: skip


def read_info(path: Path) -> CacheInfo:
    """A cache's ``info.json``, or :class:`CacheError` naming the file when it is not one."""
    try:
        raw = json.loads(path.read_text())
        raw["stop_ids"] = tuple(raw.get("stop_ids", ()))
        return CacheInfo(**raw)
    except (ValueError, TypeError) as err:
        raise CacheError(f"{path} is not a gold teacher cache's info.json ({err}); rebuild the cache") from None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary (piece → id)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def prompt_key(identity: str, prompt: Sequence[int]) -> str:
    """The cache key of the teacher samples of one prompt (the teacher's prompt ids)."""
    digest = hashlib.sha256(f"{identity}|samples|".encode())
    digest.update(np.asarray(prompt, dtype=np.int64).tobytes())
    return digest.hexdigest()


def sequence_key(identity: str, top_k: int, sequence: Sequence[int], start: int) -> str:
    """The cache key of one teacher sequence whose completion starts at token ``start``."""
    digest = hashlib.sha256(f"{identity}|{top_k}|{start}|".encode())
    digest.update(np.asarray(sequence, dtype=np.int64).tobytes())
    return digest.hexdigest()


class TeacherCache:
    """Read side: memory-mapped shards of a cache folder and an index from key to row."""

    def __init__(self, folder: str | Path) -> None:
        pa = arrow()
        self.folder = Path(folder)
        info_path = self.folder / "info.json"
        if not info_path.is_file():
            raise CacheError(f"teacher cache {self.folder} has no info.json: build one with "
                             f"`gold teacher-cache build RECIPE.yaml --out {self.folder}`")  # fmt: skip
        self.info = read_info(info_path)
        self.tables = [pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in self.shards()]
        self.index: dict[str, tuple[int, int]] = {}
        for shard, table in enumerate(self.tables):
            for row, key in enumerate(table.column("key").to_pylist()):
                self.index[key] = (shard, row)
        self.samples: dict[str, list[list[int]]] = {}
        for path in sorted(self.folder.glob("samples-*.arrow")):
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            for key, ids in zip(table.column("key").to_pylist(), table.column("ids").to_pylist(), strict=True):
                self.samples.setdefault(key, []).append(ids)

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.arrow"))

    def __len__(self) -> int:
        return len(self.index)

    def columns(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(width, known) ids and log-probabilities of a sequence's completion positions, or None on a miss."""
        found = self.index.get(key)
        if found is None:
            return None
        table = self.tables[found[0]]
        row = found[1]
        width, known = int(table.column("width")[row].as_py()), int(table.column("known")[row].as_py())
        ids = table.column("ids")[row].values.to_numpy(zero_copy_only=False).reshape(width, known)
        logprobs = table.column("logprobs")[row].values.to_numpy(zero_copy_only=False).reshape(width, known)
        return ids, logprobs

    def size_bytes(self) -> int:
        """Bytes of the rows' files (samples not counted)."""
        return sum(path.stat().st_size for path in self.shards())

    def tokens(self) -> int:
        return int(sum(int(np.sum(table.column("width").to_numpy())) for table in self.tables))


class CacheWriter:
    """Build side: appends rows in shards of up to ``shard_rows`` sequences, written at least every
    ``flush_seconds``; a rerun resumes (keys already stored are skipped) and refuses a folder built for another
    teacher, tokenizer or K."""

    def __init__(self, folder: str | Path, info: CacheInfo, *, shard_rows: int = 512, flush_seconds: float = 120.0,
                 ) -> None:  # fmt: skip
        self.folder, self.info, self.shard_rows, self.flush_seconds = Path(folder), info, shard_rows, flush_seconds
        self._flushed = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "info.json"
        if info_path.is_file():
            stored = read_info(info_path)
            stored.check(info, self.folder)
            if info.samples_per_prompt and (stored.samples_per_prompt, stored.sample_temperature,
                                            stored.sample_max_tokens) not in ((0, None, None), (
                                                info.samples_per_prompt, info.sample_temperature,
                                                info.sample_max_tokens)):  # fmt: skip
                raise CacheError(f"teacher cache {self.folder} holds {stored.samples_per_prompt} samples per prompt "
                                 f"at temperature {stored.sample_temperature}, up to {stored.sample_max_tokens} "
                                 "tokens; build the new samples into another folder")  # fmt: skip
            if info.samples_per_prompt:
                info_path.write_text(json.dumps(asdict(info), indent=1))
        else:
            info_path.write_text(json.dumps(asdict(info), indent=1))
        for partial in self.folder.glob("*.partial"):
            partial.unlink()  # a shard an interrupted build did not finish
        existing = TeacherCache(self.folder)
        self.done, self.sampled = set(existing.index), set(existing.samples)
        self._buffer: list[dict[str, Any]] = []
        self._samples: list[dict[str, Any]] = []

    def add_samples(self, key: str, samples: Sequence[Sequence[int]]) -> None:
        """One prompt's teacher samples (token ids, as the sampler returned them)."""
        if key in self.sampled:
            return
        self._samples.extend({"key": key, "ids": np.asarray(ids, dtype=np.int32)} for ids in samples)
        self.sampled.add(key)

    def add(self, key: str, ids: np.ndarray, logprobs: np.ndarray) -> None:
        """One sequence's (width, known) completion rows."""
        if key in self.done:
            return
        width, known = ids.shape
        self._buffer.append({"key": key, "width": width, "known": known, "ids": ids.astype(np.int32).ravel(),
                             "logprobs": logprobs.astype(np.float32).ravel()})  # fmt: skip
        self.done.add(key)
        if len(self._buffer) >= self.shard_rows or time.monotonic() - self._flushed > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Samples first, then rows: a sample file is never left without the rows it needs."""
        pa = arrow()
        row_schema, sample_schema = schemas()
        for prefix, rows, schema in (("samples", self._samples, sample_schema), ("shard", self._buffer, row_schema)):
            if rows:
                number = len(list(self.folder.glob(f"{prefix}-*.arrow")))
                _write(self.folder / f"{prefix}-{number:05d}.arrow", pa.Table.from_pylist(rows, schema=schema))
        self._buffer, self._samples = [], []
        self._flushed = time.monotonic()


def _write(path: Path, table: Any) -> None:
    """An Arrow IPC file (``table`` a ``pyarrow.Table``), written whole or not at all (a ``.partial`` renamed into
    place)."""
    pa = arrow()
    with pa.OSFile(str(path) + ".partial", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    Path(str(path) + ".partial").replace(path)


def completion_columns(rows: SparseRows, b: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``b``'s first ``width`` columns of sparse rows, trimmed to the widest known count."""
    ids, logprobs = rows.ids[b, :width].numpy(), rows.logprobs[b, :width].numpy()
    known = max(1, int((ids >= 0).sum(-1).max())) if width else 1
    return ids[:, :known], logprobs[:, :known]


class CachedTeacher:
    """A teacher that reads a :class:`TeacherCache`; on a miss it asks ``fallback`` (built on the first miss) or
    raises, as ``on_miss`` says ("teacher" or "error").

    Args:
        cache: the cache.
        tokenizer: the teacher's tokenizer (checked against the cache's fingerprint).
        identity: this run's teacher identity (checked against the cache's; None: whatever the cache holds).
        fallback: a zero-argument function returning the live teacher (sparse or dense), or None.
        on_miss: "teacher" (ask ``fallback``) or "error".
    """

    def __init__(self, cache: TeacherCache, tokenizer: Any, *, identity: str | None = None, top_k: int | None = None,
                 fallback: Callable[[], Any] | None = None, on_miss: str = "teacher",
                 stop: StopRule | None = None) -> None:  # fmt: skip
        if on_miss not in ("teacher", "error"):
            raise ValueError(f"teacher.cache_miss must be 'teacher' or 'error', got {on_miss!r}")
        if on_miss == "teacher" and fallback is None:
            raise CacheError("teacher.cache_miss is 'teacher' but no teacher is given to ask on a miss: set "
                             "teacher.model or teacher.server_url, or teacher.cache_miss: error")  # fmt: skip
        info = cache.info
        # what this run can tell about its teacher; the rest (vocabulary rows, version) it takes from the cache
        wanted = dataclasses.replace(info, teacher=identity or info.teacher, tokenizer=tokenizer_fingerprint(tokenizer),
                                     top_k=info.top_k if top_k is None else top_k)  # fmt: skip
        info.check(wanted, cache.folder)
        self.cache, self.tokenizer, self.on_miss = cache, tokenizer, on_miss
        self._fallback_factory, self._fallback = fallback, None
        if stop is None and info.stop_ids:
            stop = StopRule(frozenset(info.stop_ids), info.end_id)
        self._stop = stop or stop_rule(tokenizer)
        self.hits, self.misses = 0, 0

    @property
    def num_rows(self) -> int:
        return self.cache.info.vocab_rows + 1

    @property
    def tail_column(self) -> int:
        return self.cache.info.vocab_rows

    @property
    def stop(self) -> StopRule:
        return self._stop

    def logits(self, inputs: SideInputs) -> torch.Tensor:
        """(B, L, V + 1) sparse rows: the cache's, and the fallback teacher's for the rows it misses."""
        sequences, starts = real_sequences(inputs)
        width = inputs.logits_to_keep
        info = self.cache.info
        keys = [sequence_key(info.teacher, info.top_k, s, p) for s, p in zip(sequences, starts, strict=True)]
        found = [self.cache.columns(key) for key in keys]
        missing = [b for b, f in enumerate(found) if f is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        out = dense_rows(stack_rows(found, width), info.vocab_rows)
        if missing:
            out[missing] = self._missed(inputs, missing)
        return out.to(inputs.input_ids.device)

    def _missed(self, inputs: SideInputs, missing: list[int]) -> torch.Tensor:
        if self.on_miss == "error":
            raise CacheError(f"{len(missing)} of {inputs.input_ids.shape[0]} sequences of this batch are not in the "
                             f"teacher cache {self.cache.folder} (teacher.cache_miss: error); build the cache from "
                             "this recipe's data, or set teacher.cache_miss: teacher")  # fmt: skip
        teacher = self.fallback()
        rows = teacher.logits(_select(inputs, missing)).float().cpu()
        if getattr(teacher, "tail_column", None) is None:  # a dense local teacher: every column known, empty tail
            rows = torch.log_softmax(rows, dim=-1)
            rows = torch.cat([rows, torch.full_like(rows[..., :1], float("-inf"))], dim=-1)
        if rows.shape[-1] != self.num_rows:
            raise CacheError(f"the fallback teacher has {rows.shape[-1] - 1} logit rows and the cache "
                             f"{self.num_rows - 1}: they are not the same teacher")  # fmt: skip
        return rows

    def fallback(self) -> Any:
        if self._fallback is None:
            assert self._fallback_factory is not None
            self._fallback = self._fallback_factory()
        return self._fallback

    def generator(self, config: RolloutConfig) -> Generator:
        """The cache's teacher samples (``seq_kd``, drawn once at build time) when it holds them, else the teacher's
        sampler."""
        info = self.cache.info
        if info.samples_per_prompt:
            drawn = {"temperature": (info.sample_temperature, config.temperature),
                     "max_completion_length": (info.sample_max_tokens, config.max_completion_length),
                     "num_generations": (info.samples_per_prompt, config.num_generations)}  # fmt: skip
            for name, (cached, wanted) in drawn.items():
                if (cached < wanted) if name == "num_generations" else (cached != wanted):
                    raise CacheError(f"teacher cache {self.cache.folder} holds samples drawn with {name} {cached}, "
                                     f"and this run asks rollout.{name}={wanted}; rebuild with "
                                     "--seq-kd-samples under this rollout section")  # fmt: skip
            return CachedSamples(self, config)
        if self._fallback_factory is None:
            raise CacheError("rollout.seq_kd samples from the teacher, and this cache holds no samples and no "
                             "teacher is given: build it with --seq-kd-samples N, or set teacher.model")  # fmt: skip
        return self.fallback().generator(config)


class CachedSamples:
    """Replays a cache's teacher samples: the first ``num_generations`` of each prompt's, the same every epoch."""

    def __init__(self, teacher: CachedTeacher, config: RolloutConfig) -> None:
        self.teacher, self.config = teacher, config

    def rollout(self, prompts: Sequence[Sequence[int]], *, seeds: Sequence[int] | None = None) -> list[Rollout]:
        cache, out = self.teacher.cache, []
        for prompt in prompts:
            stored = cache.samples.get(prompt_key(cache.info.teacher, prompt))
            if stored is None:
                if self.teacher.on_miss == "error" or self.teacher._fallback_factory is None:
                    raise CacheError(f"a prompt of this batch has no teacher samples in {cache.folder} "
                                     "(teacher.cache_miss: error, or no teacher to sample)")  # fmt: skip
                out.extend(self.teacher.fallback().generator(self.config).rollout([prompt]))
                continue
            out.extend(Rollout(list(ids)) for ids in stored[: self.config.num_generations])
        return out


def _select(inputs: SideInputs, rows: list[int]) -> SideInputs:
    index = torch.tensor(rows, dtype=torch.long, device=inputs.input_ids.device)
    return SideInputs(inputs.input_ids[index], inputs.attention_mask[index], inputs.position_ids[index],
                      inputs.prompt_width)  # fmt: skip
