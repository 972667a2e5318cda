"""Two CPU processes through ``accelerate launch`` (gloo) end with identical student weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import zoo
from tests.gold.conftest import tiny
from tests.gold.distributed_worker import objective_run

ROOT = Path(__file__).resolve().parents[2]


def launch(out: Path, mode: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``tests.gold.distributed_worker OUT MODE`` in two CPU processes (gloo) through ``accelerate launch``."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tests.gold.distributed_worker", str(out), mode]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and its workers
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path) -> None:
    result = launch(tmp_path, "default")
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


@pytest.mark.slow
def test_sft_mixing_and_opd_are_normalised_over_all_processes(tmp_path) -> None:
    """One SGD step on 4 rows split over 2 processes equals one process on all 4 (no clipping, no Adam: a term
    normalised by a process's own count instead of the global one changes the step)."""
    result = launch(tmp_path, "objectives")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    initial = tiny(zoo("smollm2"), seed=0).state_dict()
    for name in ("sft", "opd"):
        single = objective_run(tmp_path / "single", name, batch_size=4)
        assert single.state.global_step == 1
        one_process = {k: v.detach() for k, v in single.model.state_dict().items()}
        for key, value in one_process.items():
            torch.testing.assert_close(ranks[0][name][key], ranks[1][name][key], rtol=0, atol=0, msg=key)
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
        assert any(not torch.equal(initial[k], v) for k, v in one_process.items())  # the step moved the weights


@pytest.mark.slow
def test_an_error_on_one_process_stops_every_process(tmp_path) -> None:
    """A reward function that raises on rank 1 only: rank 1 stops with its error, rank 0 with PeerFailure,
    instead of waiting in the step's collective for a process that left."""
    result = launch(tmp_path, "reward_fails", timeout=300)
    assert result.returncode != 0
    errors = {rank: (tmp_path / f"rank{rank}.error").read_text(encoding="utf-8") for rank in (0, 1)}
    assert "fails on rank 1 only" in errors[1]
    assert errors[0].startswith("PeerFailure: another process failed while building the batches of step 1"), errors
