"""``gold --help`` answers fast (issue 30, item 4): the parser imports neither torch nor transformers.

Timed as a ratio to ``python -c pass`` on the same machine (the best of a few runs each), not in seconds, so that a
slow or busy machine does not fail it. Measured on 2 shared cores: ``python -c pass`` 0.023 s, ``gold --help``
0.055 s (2.4×); ``import numpy`` alone is 8.5×, ``import torch`` 90×, and ``gold --help`` was 5.6 s (240×) while the
commands imported the trainer before argparse.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MAX_RATIO = 5.0  # a help that imports numpy (8.5×) or torch (90×) fails; the parser alone is 2.4×


def _best_seconds(argv: list[str], runs: int = 5) -> float:
    """The shortest wall time of ``runs`` runs of ``argv`` (each must succeed)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=120)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["--version"]], ids=" ".join)
def test_help_is_a_small_multiple_of_starting_python(argv: list[str]) -> None:
    baseline = _best_seconds([sys.executable, "-c", "pass"])
    seconds = _best_seconds([sys.executable, "-m", "gold.cli", *argv])
    assert seconds < MAX_RATIO * baseline, f"gold {' '.join(argv)}: {seconds:.2f} s, {seconds / baseline:.1f}× python"


def test_the_bound_catches_an_import_of_torch() -> None:
    """The ratio would fail a parser that imported torch (what ``gold --help`` did before)."""
    baseline = _best_seconds([sys.executable, "-c", "pass"])
    seconds = _best_seconds([sys.executable, "-c", "import torch"], runs=2)
    assert seconds > MAX_RATIO * baseline, f"import torch: {seconds / baseline:.1f}× python"


def test_the_parser_imports_no_heavy_module() -> None:
    """What ``gold --help`` imports, checked directly: no torch, transformers, numpy or trainer."""
    heavy = ("torch", "transformers", "numpy", "gold.training.trainer")
    code = f"import sys, gold.cli.parser as p; p.build_parser(); print(*set({heavy}) & sys.modules.keys())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "", f"the parser imports {done.stdout.strip()}"
