"""A teacher behind an OpenAI-compatible vLLM server: sparse rows from ``prompt_logprobs`` across tokenizers.

The trainer tokenizes the completion bytes with the teacher's tokenizer exactly as for a local teacher and sends the
teacher's token ids (prompt + completion) to ``{url}/v1/completions`` with ``max_tokens: 1`` and
``prompt_logprobs: K``. vLLM answers, for each position, the top-K next-token log-probabilities and always the actual
next token's; :class:`ServedTeacher` writes them as sparse rows with a tail bucket (:mod:`gold.teacher.sparse`).
TRL's and ms-swift's server teachers gather the student's log-probs at the teacher's ids, so they need one tokenizer;
here the rows stay in the teacher's vocabulary and the loss aligns them.

Temperature: vLLM returns raw log-probabilities for prompt positions (``gold vllm-serve`` runs with
``--logprobs-mode raw_logprobs``; checked: the answer at temperature 2 equals the one at 1), so the client always
asks at temperature 1 and the loss applies ``loss.teacher_temperature`` as it does to a local teacher's logits.

At start the client checks, before any model loads: that ``/health`` answers (once, unless ``wait`` says how long a
starting server may take), that the server's tokenizer encodes a probe text as the given teacher tokenizer does (its
rows are read by id: another tokenizer's would be read at the wrong ids), and that one short request at K comes back
with finite log-probabilities. A NaN from the server, then or later, is named as the server's, not the training's.

Any server works that was started with ``--max-logprobs`` ≥ K (``gold vllm-serve`` sets -1: no cap). Requests go one
per sequence, ``max_concurrency`` at a time, through :func:`gold.rollout.vllm_server.request_json`: connection errors
and 5xx/429 answers are retried with backoff, other refusals raise :class:`ServerError` naming the URL, the server's
answer and what to do. Under ``accelerate launch`` every
process asks for its own micro-batch (benchmarks/RESULTS.md compares this with one process asking for all).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gold.config import RolloutConfig
from gold.data.examples import SideInputs
from gold.models.stops import StopRule, folder_stop_rule, stop_rule
from gold.rollout import Generator
from gold.rollout.vllm_server import ServerError, request_json, wait_for_server
from gold.teacher.sparse import SparseRows, dense_rows, stack_rows

TOO_LONG = (
    "prompt + completion exceed the server's --max-model-len: raise it or shorten rollout.max_prompt_length / "
    "max_completion_length"
)
HINTS = {  # a phrase of vLLM's refusal → what to do
    "greater than max allowed": "start the server with --max-logprobs ≥ teacher.top_k (gold vllm-serve sets -1: no "
    "cap) or lower teacher.top_k",
    "does not exist": "the server serves another model: check teacher.server_url",
    "maximum model length": TOO_LONG,
    "maximum context length": TOO_LONG,
    "Not Found": "gold checks the served tokenizer through vLLM's /tokenize and reads /v1/completions: is it vLLM?",
}
# encoded by the server and here at start: digits, accents, CJK, an emoji sequence, code indentation
PROBE_TEXT = "Distillation: 1234 + 5678 = 6912. Café ☕ 東京の人口 👩🏽‍💻\n    return x ** 2"
SEQ_KD_REFUSAL = (
    "rollout.seq_kd samples from the teacher, and the teacher at {url} is served for its log-probs only; draw teacher "
    "samples once into a teacher cache (gold teacher-cache build --seq-kd-samples N, with the teacher's folder as "
    "teacher.model) or use a local teacher"
)


class ServedTeacher:
    """Teacher rows from a vLLM server.

    Args:
        url: the server's base URL (``http://host:port``).
        tokenizer: the teacher's fast tokenizer (the server's model must use the same ids).
        top_k: K, the log-probabilities asked per position (plus the actual token's); -1: every id (exact, K = V).
        timeout: seconds to wait for each answer.
        wait: seconds to keep asking ``/health`` of a server still starting (0: one try, at most 5 s).
        max_concurrency: requests in flight at once.
        retries: further attempts after a connection error or a 5xx / 429 answer (backoff 0.5 s, doubling).
        vocab_rows: V, the teacher's logit rows (default: the tokenizer's length); ids at or above it stay in the tail.
        stop: the teacher's stop rule (default: from the tokenizer).
    """

    def __init__(self, url: str, tokenizer: Any, *, top_k: int = 20, timeout: float = 60.0, max_concurrency: int = 8,
                 retries: int = 3, vocab_rows: int | None = None, stop: StopRule | None = None,
                 wait: float = 0.0) -> None:  # fmt: skip
        if top_k == 0 or top_k < -1:
            raise ValueError(f"teacher.top_k must be -1 (every id) or at least 1, got {top_k}")
        if max_concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError(f"need max_concurrency ≥ 1, retries ≥ 0 and timeout > 0; got {max_concurrency}, "
                             f"{retries}, {timeout}")  # fmt: skip
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.top_k, self.timeout, self.retries = top_k, timeout, retries
        self.max_concurrency = max_concurrency
        self.vocab_rows = int(vocab_rows or len(tokenizer))
        wait_for_server(self.url, wait, hint="start the teacher's server with `gold vllm-serve TEACHER_DIR --port "
                        "PORT` (or any `vllm serve` with --max-logprobs ≥ K) and set teacher.server_url; for a server "
                        "still starting, teacher.server_wait=SECONDS")  # fmt: skip
        self.model = self._post("/v1/models", None)["data"][0]["id"]
        # the served folder's generation config adds stop ids, as a local teacher's does (when this machine sees it)
        self._stop = stop or (folder_stop_rule(self.model, tokenizer) if Path(self.model).is_dir() else
                              stop_rule(tokenizer))  # fmt: skip
        self.requests, self.request_seconds = 0, 0.0
        self._check_tokenizer()
        self._check_rows()

    @property
    def num_rows(self) -> int:
        return self.vocab_rows + 1

    @property
    def tail_column(self) -> int:
        return self.vocab_rows

    @property
    def stop(self) -> StopRule:
        return self._stop

    def logits(self, inputs: SideInputs) -> torch.Tensor:
        """(B, L, V + 1) sparse rows of the loss view (:func:`gold.teacher.sparse.dense_rows`)."""
        return dense_rows(self.rows(inputs), self.vocab_rows).to(inputs.input_ids.device)

    def rows(self, inputs: SideInputs) -> SparseRows:
        """The known entries of the loss-view columns of every row of ``inputs``."""
        sequences, starts = real_sequences(inputs)
        return self.sequence_rows(sequences, starts, inputs.logits_to_keep)

    def sequence_rows(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], width: int) -> SparseRows:
        """Rows for token sequences: column c of sequence i is the position predicting token ``starts[i] + c``."""
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(sequences)))) as pool:
            answers = list(pool.map(self._ask, sequences))
        self.requests += len(sequences)
        self.request_seconds += time.perf_counter() - began
        entries = [position_entries(answer, sequence, start, width, self.url)
                   for answer, sequence, start in zip(answers, sequences, starts, strict=True)]  # fmt: skip
        return stack_rows(entries, width)

    def generator(self, config: RolloutConfig) -> Generator:
        raise ValueError(SEQ_KD_REFUSAL.format(url=self.url))

    def _check_tokenizer(self) -> None:
        """The server's tokenizer must encode :data:`PROBE_TEXT` as the teacher tokenizer given here does."""
        here = [int(i) for i in self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]]
        body = {"model": self.model, "prompt": PROBE_TEXT, "add_special_tokens": False}
        served = [int(i) for i in self._post("/tokenize", body)["tokens"]]
        if served == here:
            return
        padded = itertools.zip_longest(served, here)  # None past the shorter one
        at, (served_id, here_id) = next((i, pair) for i, pair in enumerate(padded) if pair[0] != pair[1])
        ids = f"server id {served_id}, here {here_id}"
        raise ServerError(f"teacher server {self.url} serves {self.model!r}, whose tokenizer encodes a probe text "
                          f"differently from the teacher tokenizer given here (token {at}: {ids}): its rows would be "
                          "read at the wrong ids; set teacher.tokenizer (or teacher.model) to the served model's, or "
                          "teacher.server_url to a server of this teacher")  # fmt: skip

    def _check_rows(self) -> None:
        """One short request at K: the server answers prompt log-probs at this K (``--max-logprobs``), finite."""
        probe = [int(i) for i in self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:2]]
        position_entries(self._ask(probe), probe, 1, 1, self.url)

    def _ask(self, sequence: Sequence[int]) -> dict[str, Any]:
        body = {"model": self.model, "prompt": [int(i) for i in sequence], "max_tokens": 1, "temperature": 1.0,
                "prompt_logprobs": self.top_k}  # fmt: skip
        return self._post("/v1/completions", body)

    def _post(self, path: str, body: dict[str, Any] | None) -> Any:
        return request_json(self.url, path, body, method="GET" if body is None else "POST", timeout=self.timeout,
                            retries=self.retries, name="teacher server", hints=HINTS)  # fmt: skip


def real_sequences(inputs: SideInputs) -> tuple[list[list[int]], list[int]]:
    """Each row's tokens without padding, and where its completion starts in them."""
    mask = inputs.attention_mask.bool().cpu()
    ids = inputs.input_ids.cpu()
    sequences = [ids[b][mask[b]].tolist() for b in range(ids.shape[0])]
    starts = mask[:, : inputs.prompt_width].sum(dim=1).tolist()
    return sequences, [int(s) for s in starts]


def position_entries(answer: dict[str, Any], sequence: Sequence[int], start: int, width: int,
                     url: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(columns, known) ids and log-probabilities of one answer's loss-view columns (those inside the sequence; the
    rest are left to :func:`gold.teacher.sparse.stack_rows`). Column c is the position predicting token
    ``start + c``; the actual token must be among its entries."""
    choice = answer["choices"][0]
    found = choice.get("prompt_logprobs")
    if found is None or len(found) != len(sequence):
        count = 0 if found is None else len(found)
        raise ServerError(f"teacher server {url} answered {count} prompt positions for a sequence of "
                          f"{len(sequence)} tokens; is it a vLLM server with prompt_logprobs?")  # fmt: skip
    positions = range(start, min(start + width, len(sequence)))
    known = max([1] + [len(found[p]) for p in positions])
    ids = np.full((len(positions), known), -1, dtype=np.int64)
    logprobs = np.full((len(positions), known), -np.inf, dtype=np.float32)
    for c, position in enumerate(positions):
        entry = found[position]
        if str(sequence[position]) not in entry:
            raise ServerError(f"teacher server {url} left out the actual token {sequence[position]} at position "
                              f"{position}; a vLLM server always includes it: is this vLLM?")  # fmt: skip
        ids[c, : len(entry)] = [int(i) for i in entry]
        logprobs[c, : len(entry)] = [math.nan if v["logprob"] is None else float(v["logprob"]) for v in entry.values()]
    broken = np.isnan(logprobs) | np.isposinf(logprobs)
    if broken.any():
        c, j = (int(x) for x in np.argwhere(broken)[0])
        raise ServerError(f"teacher server {url} answered log-probability {logprobs[c, j]} for token {ids[c, j]} at "
                          f"position {start + c}: the served model computes non-finite values (its weights, or a "
                          "dtype that overflows: serve it in float32 or bfloat16); the rows come from the server, not "
                          "from training")  # fmt: skip
    return ids, logprobs
