"""Two CPU processes through ``accelerate launch`` (gloo) end with identical student weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import zoo
from tests.gold.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tests.gold.distributed_worker", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for name, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][name], rtol=0, atol=0, msg=name)
    initial = tiny(zoo("smollm2"), seed=0).state_dict()
    assert any(not torch.equal(initial[name], value) for name, value in ranks[0]["state"].items())  # it trained
    assert all(ranks[r]["groups"][0] for r in (0, 1))  # both ranks logged alignment
    assert ranks[0]["completions"] != ranks[1]["completions"]  # each rank trained on its own shard and samples
