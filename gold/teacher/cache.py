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

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gold.config import RolloutConfig
from gold.data import SideInputs
from gold.rollout import Generator
from gold.stops import StopRule, stop_rule
from gold.teacher.served import real_sequences
from gold.teacher.sparse import SparseRows, dense_rows

CACHE_VERSION = 1
SCHEMA = pa.schema([("key", pa.string()), ("width", pa.int32()), ("known", pa.int32()), ("ids", pa.list_(pa.int32())),
                    ("logprobs", pa.list_(pa.float32()))])  # fmt: skip


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


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary (piece → id)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def sequence_key(identity: str, top_k: int, sequence: Sequence[int], start: int) -> str:
    """The cache key of one teacher sequence whose completion starts at token ``start``."""
    digest = hashlib.sha256(f"{identity}|{top_k}|{start}|".encode())
    digest.update(np.asarray(sequence, dtype=np.int64).tobytes())
    return digest.hexdigest()


class TeacherCache:
    """Read side: memory-mapped shards of a cache folder and an index from key to row."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        info_path = self.folder / "info.json"
        if not info_path.is_file():
            raise CacheError(f"teacher cache {self.folder} has no info.json: build one with "
                             f"`gold teacher-cache build RECIPE.yaml --out {self.folder}`")  # fmt: skip
        self.info = CacheInfo(**json.loads(info_path.read_text()))
        self.tables = [pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in self.shards()]
        self.index: dict[str, tuple[int, int]] = {}
        for shard, table in enumerate(self.tables):
            for row, key in enumerate(table.column("key").to_pylist()):
                self.index[key] = (shard, row)

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.arrow"))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

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
        return sum(path.stat().st_size for path in self.shards())

    def tokens(self) -> int:
        return int(sum(pa.compute.sum(table.column("width")).as_py() or 0 for table in self.tables))


class CacheWriter:
    """Build side: appends rows in shards of ``shard_rows`` sequences; a rerun resumes (keys already stored are
    skipped) and refuses a folder built for another teacher, tokenizer or K."""

    def __init__(self, folder: str | Path, info: CacheInfo, *, shard_rows: int = 512) -> None:
        self.folder, self.info, self.shard_rows = Path(folder), info, shard_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "info.json"
        if info_path.is_file():
            CacheInfo(**json.loads(info_path.read_text())).check(info, self.folder)
        else:
            info_path.write_text(json.dumps(asdict(info), indent=1))
        for partial in self.folder.glob("*.partial"):
            partial.unlink()  # a shard an interrupted build did not finish
        self.done = set(TeacherCache(self.folder).index) if info_path.is_file() else set()
        self._buffer: list[dict[str, Any]] = []

    def add(self, key: str, ids: np.ndarray, logprobs: np.ndarray) -> None:
        """One sequence's (width, known) completion rows."""
        if key in self.done:
            return
        width, known = ids.shape
        self._buffer.append({"key": key, "width": width, "known": known, "ids": ids.astype(np.int32).ravel(),
                             "logprobs": logprobs.astype(np.float32).ravel()})  # fmt: skip
        self.done.add(key)
        if len(self._buffer) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        number = len(list(self.folder.glob("shard-*.arrow")))
        path = self.folder / f"shard-{number:05d}.arrow"
        table = pa.Table.from_pylist(self._buffer, schema=SCHEMA)
        with pa.OSFile(str(path) + ".partial", "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            writer.write_table(table)
        Path(str(path) + ".partial").replace(path)
        self._buffer = []


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
        wanted = CacheInfo(identity or info.teacher, tokenizer_fingerprint(tokenizer),
                           info.top_k if top_k is None else top_k, info.vocab_rows)  # fmt: skip
        info.check(wanted, cache.folder)
        self.cache, self.tokenizer, self.on_miss = cache, tokenizer, on_miss
        self._fallback_factory, self._fallback = fallback, None
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
        known = max([1] + [f[0].shape[1] for f in found if f is not None])
        ids = torch.full((len(found), width, known), -1, dtype=torch.int64)
        logprobs = torch.full((len(found), width, known), float("-inf"), dtype=torch.float32)
        for b, f in enumerate(found):
            if f is not None:
                columns = min(width, f[0].shape[0])
                ids[b, :columns, : f[0].shape[1]] = torch.from_numpy(f[0][:columns].astype(np.int64))
                logprobs[b, :columns, : f[1].shape[1]] = torch.from_numpy(f[1][:columns].copy())
        out = dense_rows(SparseRows(ids, logprobs), info.vocab_rows)
        if missing:
            out[missing] = self._missed(inputs, missing, width)
        return out.to(inputs.input_ids.device)

    def _missed(self, inputs: SideInputs, missing: list[int], width: int) -> torch.Tensor:
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
        if self._fallback_factory is None:
            raise CacheError("rollout.seq_kd samples from the teacher, and this run has only a teacher cache: set "
                             "teacher.model so that a teacher can sample")  # fmt: skip
        return self.fallback().generator(config)


def _select(inputs: SideInputs, rows: list[int]) -> SideInputs:
    index = torch.tensor(rows, dtype=torch.long, device=inputs.input_ids.device)
    return SideInputs(inputs.input_ids[index], inputs.attention_mask[index], inputs.position_ids[index],
                      inputs.prompt_width)  # fmt: skip
