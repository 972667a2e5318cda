"""Optional packages, imported where a feature uses them: ``import gold`` needs only the core dependencies.

Each optional package belongs to one extra of ``pyproject.toml``. A feature that needs one calls :func:`require` at
the point of use; a missing package then ends in one :class:`MissingExtra` line naming the feature and the
``pip install`` that brings it, instead of an import error deep in a traceback (or, worse, at ``import gold``).
``tests/test_packaging.py`` checks that every module imported at module level is a core dependency and
every other third-party import belongs to an extra listed here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module → the extra of pyproject.toml that installs it
EXTRA_OF = {
    "pyarrow": "datasets",
    "datasets": "datasets",
    "triton": "triton",
    "wandb": "wandb",
    "vllm": "vllm",
    "peft": "peft",
    "tiktoken": "zoo",
    "gguf": "zoo",
    "sentencepiece": "zoo",
}


class MissingExtra(ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


def install_hint(module: str) -> str:
    """The ``pip install`` line that brings ``module`` (its extra of gold-distill)."""
    root = module.split(".")[0]
    if root not in EXTRA_OF:
        raise KeyError(f"{root!r} is not one of gold's optional packages ({', '.join(sorted(EXTRA_OF))})")
    return f"pip install 'gold-distill[{EXTRA_OF[root]}]'"


def require(module: str, *, feature: str) -> ModuleType:
    """Import the optional ``module`` for ``feature``, or raise :class:`MissingExtra` saying what to install.

    Args:
        module: a dotted module name whose top-level package is one of ``EXTRA_OF``.
        feature: what needs it, in the user's words (``"the teacher cache"``), for the message.
    """
    hint = install_hint(module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"{feature} needs {module.split('.')[0]}, which is not installed: {hint} ({err})") from None
