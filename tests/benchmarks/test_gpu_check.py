"""benchmarks/gpu_check.sh dry-runs on CPU (``--device cpu --tiny``), as CI runs it: every trainer run measures a
step, the ratios come out, and one JSON is written; missing packages and a missing GPU are refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_the_gpu_check_dry_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = _script("--out", str(out), "--device", "cpu", "--tiny", "--steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and len(result["runs"]) == 12
    for run in result["runs"]:
        assert run["step_s"] > 0 and run["peak_memory_gib"] is None, run  # no CUDA: no allocator peak
    assert {r["trainer"] for r in result["runs"]} == {"gold", "gold_logits", "gold_quantized_uld", "trl"}
    for key, ratios in result["ratios"].items():
        assert ratios["trl_over_gold"] > 0 and ratios["gold_over_floor"] > 0, key
        assert (ratios["logits_path_over_gold"] is not None) == key.endswith("hybrid"), key
        assert (ratios["quantized_uld_over_gold"] is not None) == key.endswith("hybrid"), key
    assert "skipped" in result["gpu_tests"]["gpu_marked"]["summary"]  # GPU-marked tests exist, and skip without CUDA
    assert result["gpu_tests"]["triton_and_hidden"]["exit_code"] == 0  # under Triton's interpreter here


def test_the_gpu_check_refuses_cuda_without_it_and_names_missing_packages(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():  # (with CUDA this would start the whole check)
        done = _script("--out", str(tmp_path / "x.json"))
        assert done.returncode == 2 and "--device cuda: torch sees no CUDA device here" in done.stderr
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    done = _script("--out", str(tmp_path / "x.json"), python=str(bare / "bin" / "python"))
    assert done.returncode == 2 and "missing Python packages: torch transformers" in done.stderr
    done = _script("--wheels", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and f"--wheels {tmp_path / 'nowhere'} is not a folder" in done.stderr
