"""The teacher a recipe names (local model, server, cache) and the identity a cache stores it under (the build of a
cache from a recipe is ``gold teacher-cache build``: :mod:`gold.cli.teacher_cache`)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gold.config import ModelConfig, RecipeError, RolloutConfig
from gold.models.build import build_model
from gold.teacher.cache import (
    CachedTeacher,
    TeacherCache,
)
from gold.teacher.local import LocalTeacher
from gold.teacher.served import SEQ_KD_REFUSAL, ServedTeacher

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
logger = logging.getLogger(__name__)


def model_identity(spec: ModelConfig, *, seed: int = 0) -> str:
    """What names a teacher for a cache: a local folder by a fingerprint of its config and weight files (their names,
    sizes, first and last MiB: cheap for large checkpoints, different for any retrained one); a zoo name or hub id by
    itself (and its ``revision``); a ``tiny`` random model by its tokenizer, sizes and seed."""
    if spec.model == "tiny":
        return f"tiny:{spec.tokenizer}:{sorted(spec.tiny.items())}:seed={seed}"
    if Path(spec.model).is_dir():
        return folder_identity(Path(spec.model))
    return f"model:{spec.model}" + (f"@{spec.revision}" if spec.revision else "")  # another revision: other weights


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


def teacher_sources(spec: Any) -> str | None:
    """Where a ``teacher`` section's rows come from when it names more than one source (None: one source): the cache
    first, a miss then goes to the server, else to the local model; a model beside a server is never loaded."""
    server_url, cache, model = spec.server_url, spec.cache, spec.model
    if not (cache and (server_url or model)) and not (server_url and model):
        return None
    unused = f"; teacher.model {model!r} is not loaded (teacher.server_url wins)" if server_url and model else ""
    if not cache:
        return f"gold: teacher rows come from the served teacher at {server_url}{unused}"
    if spec.cache_miss == "error":
        miss = "a miss is an error (teacher.cache_miss: error)"
    else:
        miss = f"a miss asks the served teacher at {server_url}" if server_url else f"a miss loads {model!r}"
    return f"gold: teacher rows come from the cache {cache}; {miss}{unused}"


def check_served_seq_kd(spec: Any, rollout: RolloutConfig) -> None:
    """Refuses, before anything loads, ``rollout.seq_kd`` with a served teacher and no cache of teacher samples: a
    server gives log-probs, not samples (else the first off-policy step would fail)."""
    if not (rollout.seq_kd and rollout.lmbda < 1 and getattr(spec, "server_url", None)):
        return
    if spec.cache and TeacherCache(spec.cache).info.samples_per_prompt:
        return  # the cache replays its teacher samples
    raise RecipeError(SEQ_KD_REFUSAL.format(url=spec.server_url))


def build_teacher(spec: ModelConfig, tokenizer: Any, *, device: str | None, seed: int,
                  served: ServedTeacher | None = None) -> Any:  # fmt: skip
    """The teacher of a recipe's ``teacher`` section: a served one (``server_url``), a cache (``cache``; the server or
    model asked on a miss, the model loaded on the first miss), or a local model (precedence:
    :func:`teacher_sources`, logged). ``served``: the section's served teacher, already built (and checked)."""
    server_url, cache = getattr(spec, "server_url", None), getattr(spec, "cache", None)
    sources = teacher_sources(spec) if server_url or cache else None  # a plain ModelConfig has neither
    if sources:
        logger.warning(sources)

    def local() -> LocalTeacher:
        return LocalTeacher(build_model(spec, tokenizer, seed=seed), tokenizer, device=device,
                            shard=getattr(spec, "shard", False))  # fmt: skip

    served = served or (served_teacher(spec, tokenizer) if server_url else None)
    if cache is None:
        return served or local()
    live: Callable[[], Any] | None = (lambda: served) if served else (local if spec.model else None)
    identity = served_identity(served) if served else (model_identity(spec, seed=seed) if spec.model else None)
    return CachedTeacher(TeacherCache(cache), tokenizer, identity=identity, top_k=spec.top_k, fallback=live,  # type: ignore[attr-defined]
                         on_miss=spec.cache_miss)  # type: ignore[attr-defined]  # fmt: skip


def served_teacher(spec: Any, tokenizer: Any) -> ServedTeacher:
    """The served teacher of a recipe's ``teacher`` section (``server_url``)."""
    return ServedTeacher(spec.server_url, tokenizer, top_k=spec.top_k, timeout=spec.timeout,
                         max_concurrency=spec.max_concurrency, retries=spec.retries,
                         wait=spec.server_wait)  # fmt: skip
