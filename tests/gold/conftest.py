"""Fixtures for trainer-level tests: two real tokenizers of different families and tiny models."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import TrainingArguments

from gold.models.build import tiny_model
from tests.conftest import zoo

ROWS = [
    {"prompt": f"What is {a} plus {b}?\n", "completion": f"It is {a + b}. Café ☕ 東京!"}
    for a in range(3)
    for b in range(3)
] + [{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there 👋🏽"}]}]


@pytest.fixture(scope="session")
def student_tokenizer() -> Any:
    """Byte-level BPE (SmolLM2)."""
    return zoo("smollm2")


@pytest.fixture(scope="session")
def teacher_tokenizer() -> Any:
    """SentencePiece with byte fallback and a dummy prefix (Mistral v1)."""
    return zoo("mistral-v1")


def tiny(tokenizer: Any, seed: int = 0) -> Any:
    return tiny_model(tokenizer, seed=seed, hidden_size=16, layers=1)


def training_args(tmp_path: Any, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = dict(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    settings.update(overrides)
    return TrainingArguments(**settings)


def require_vllm() -> None:
    """Skips a module without vLLM, unless GOLD_REQUIRE_VLLM is set (``make test-vllm``): there a missing or
    broken vLLM fails the run instead of skipping its tests silently."""
    import os

    if os.environ.get("GOLD_REQUIRE_VLLM"):
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm", reason="vLLM is installed in .venv-vllm (make test runs these there)")
