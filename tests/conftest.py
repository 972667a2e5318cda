"""Shared fixtures: zoo tokenizers (loaded once per session) and text fragments for property tests."""

from __future__ import annotations

import os

import torch  # plain torch does not import Triton

# Triton kernels run under its interpreter where there is no GPU: set before anything imports Triton (transformers
# may, through torch._dynamo), or Triton's own library functions stay compiled-only
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gold.models.zoo import load_tokenizer, tokenizer_names

settings.register_profile(
    "gold", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("gold")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ZOO = tokenizer_names()
# WordPiece lower-cases, strips accents and drops whitespace: it is aligned approximately and is
# tested on its own texts rather than on random Unicode.
EXACT_ZOO = [name for name in ZOO if name != "minilm"]


@functools.cache
def zoo(name: str) -> Any:
    return load_tokenizer(name)


@pytest.fixture(scope="session")
def qwen() -> Any:
    return zoo("qwen2.5")


@pytest.fixture(scope="session")
def llama() -> Any:
    return zoo("llama-3")


FRAGMENTS = [
    "東京は日本の首都です",
    "漢字かなカナ",
    "👍🏽",
    "👩‍💻",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "e\u0301",
    "n\u0303o\u0308",
    "\r\n",
    "\t",
    "    ",
    "  ",
    "\n\n",
    "1234567890123",
    "3.14159",
    "def f(x):\n    return x ** 2\n",
    "if (a && b) { c++; }",
    "<|im_end|>",
    "</s>",
    "<s>",
    "Hello, World!",
    " the",
    "naïve café",
    "Ελληνικά",
    "Русский текст",
    "مرحبا",
    "\u200b",
]

texts = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
    ),
    max_size=12,
).map("".join)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """GPU-marked tests skip where torch sees no CUDA device (benchmarks/gpu_check.sh runs them where it does)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run benchmarks/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
