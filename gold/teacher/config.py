"""The recipe's ``teacher`` section: a model (as ``student``), or a served teacher, or a teacher cache."""

from __future__ import annotations

from dataclasses import dataclass

from gold.config import ModelConfig


@dataclass(frozen=True)
class TeacherConfig(ModelConfig):
    """A teacher: ``model`` loaded locally, or rows from ``server_url`` (a vLLM server) or ``cache`` (a folder from
    ``gold teacher-cache build``). With a server or a cache, ``model`` may be left out (then give ``tokenizer``).
    Precedence (logged at start, :func:`gold.teacher.build.teacher_sources`): the cache answers first; a miss asks the
    server when ``server_url`` is set, else ``model``; with ``server_url``, ``model`` is never loaded (it names the
    tokenizer when ``tokenizer`` is unset), and the cache must have been built for the served model."""

    # a vLLM server (OpenAI-compatible, `gold vllm-serve TEACHER` or `vllm serve --max-logprobs K`) that serves the
    # teacher: rows come from its prompt_logprobs (gold.teacher.served)
    server_url: str | None = None
    # K: log-probabilities per position from the server or the cache build (plus the actual token's); -1: every id
    top_k: int = 20
    # seconds to wait for each answer of the server
    timeout: float = 120.0
    # seconds to keep asking /health of a server still starting (0: one try of at most 5 s, so a missing server or a
    # wrong address is named at once)
    server_wait: float = 0.0
    # requests in flight at once (per process)
    max_concurrency: int = 8
    # further attempts after a connection error or a 5xx / 429 answer
    retries: int = 3
    # a teacher cache folder (gold.teacher.cache): rows are read from it instead of running the teacher
    cache: str | None = None
    # on a cache miss: "teacher" (ask the model or server above) or "error"
    cache_miss: str = "teacher"
    # shard the local teacher's weights over the run's processes (FSDP2, gold.models.sharding), for a teacher too big
    # for one
    # GPU: each process keeps 1/N and a forward gathers one layer at a time; needs a multi-process launch
    shard: bool = False

    def __post_init__(self) -> None:
        if self.peft is not None:
            raise ValueError("teacher.peft: the teacher is frozen, adapters would never train; give student.peft")
        if not self.model and (self.server_url or self.cache):
            if not self.tokenizer:
                raise ValueError("a served or cached teacher without teacher.model needs teacher.tokenizer (a zoo "
                                 "name or the teacher's folder)")  # fmt: skip
            if self.chat_template is not None and not self.chat_template:
                raise ValueError(
                    "TeacherConfig.chat_template is empty; give a built-in name or a Jinja file, or omit it"
                )
            self._check_served()
            return
        super().__post_init__()
        self._check_served()

    def _check_served(self) -> None:
        if self.top_k == 0 or self.top_k < -1 or isinstance(self.top_k, bool):
            raise ValueError(f"TeacherConfig.top_k must be -1 (every id) or at least 1, got {self.top_k!r}")
        if self.timeout <= 0 or self.max_concurrency < 1 or self.retries < 0 or self.server_wait < 0:
            raise ValueError(f"TeacherConfig needs timeout > 0, max_concurrency ≥ 1, retries ≥ 0 and server_wait ≥ 0, "
                             f"got {self.timeout}, {self.max_concurrency}, {self.retries}, "
                             f"{self.server_wait}")  # fmt: skip
        if self.cache_miss not in ("teacher", "error"):
            raise ValueError(f"TeacherConfig.cache_miss must be 'teacher' or 'error', got {self.cache_miss!r}")
        if self.server_url is not None and not self.server_url.startswith(("http://", "https://")):
            raise ValueError(f"TeacherConfig.server_url must start with http:// or https://, got {self.server_url!r}")
        if self.shard and (self.server_url or self.cache or self.model in ("self", "self-dynamic")):
            given = "server_url" if self.server_url else "cache" if self.cache else f"model {self.model!r}"
            raise ValueError(f"teacher.shard shards a local teacher model, but teacher.{given} is set: a served, "
                             "cached or self teacher has none to shard (a cache's misses would reach the processes at "
                             "different steps); drop teacher.shard")  # fmt: skip
        if self.model in ("self", "self-dynamic") and (self.server_url or self.cache):
            raise ValueError(f"teacher.model {self.model!r} is the student itself: it cannot be served or cached")
