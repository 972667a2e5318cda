"""Two CPU processes through ``accelerate launch`` (gloo) end with identical student weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from tests.conftest import zoo
from tests.gold.conftest import tiny
from tests.gold.distributed_worker import objective_run, teachers_run

ROOT = Path(__file__).resolve().parents[3]


FSDP2 = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
         "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--fsdp_state_dict_type", "FULL_STATE_DICT",
         "--fsdp_reshard_after_forward", "true"]  # fmt: skip


def launch(out: Path, mode: str, timeout: int = 600, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``tests.gold.distributed_worker OUT MODE`` in two CPU processes (gloo) through ``accelerate launch``
    (``extra``: more launcher options, e.g. :data:`FSDP2`)."""
    mode_flag = [] if "--use_fsdp" in extra else ["--multi_gpu"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *mode_flag, "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *extra,
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
    _split_step_equals_one_process(tmp_path, "objectives", objective_run, ("sft", "opd"))


def _split_step_equals_one_process(tmp_path, mode: str, run, names: Sequence[str]) -> None:
    """``mode``'s runs ``names`` in 2 processes of 2 rows each end with the weights of ``run(..., batch_size=4)``
    in this one process, and the step moved them."""
    result = launch(tmp_path, mode)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    initial = tiny(zoo("smollm2"), seed=0).state_dict()
    for name in names:
        single = run(tmp_path / "single", name, batch_size=4)
        assert single.state.global_step == 1
        one_process = {k: v.detach() for k, v in single.model.state_dict().items()}
        for key, value in one_process.items():
            torch.testing.assert_close(ranks[0][name][key], ranks[1][name][key], rtol=0, atol=0, msg=key)
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
        assert any(not torch.equal(initial[k], v) for k, v in one_process.items())  # the step moved the weights


@pytest.mark.slow
def test_two_teachers_routed_or_mixed_are_normalised_over_all_processes(tmp_path) -> None:
    """Two teachers of different tokenizers (issue 31): one SGD step on 4 rows split over 2 processes equals one
    process on all 4, routed by teacher_id and mixed with weights (each process's rows split unevenly by teacher)."""
    _split_step_equals_one_process(tmp_path, "teachers", teachers_run, ("routing", "mixing"))


@pytest.mark.slow
def test_an_error_on_one_process_stops_every_process(tmp_path) -> None:
    """A reward function that raises on rank 1 only: rank 1 stops with its error, rank 0 with PeerFailure,
    instead of waiting in the step's collective for a process that left."""
    result = launch(tmp_path, "reward_fails", timeout=300)
    assert result.returncode != 0
    errors = {rank: (tmp_path / f"rank{rank}.error").read_text(encoding="utf-8") for rank in (0, 1)}
    assert "fails on rank 1 only" in errors[1]
    assert errors[0].startswith("PeerFailure: another process failed while building the batches of step 1"), errors


@pytest.mark.slow
def test_gold_steps_on_an_fsdp2_student_end_with_the_weights_of_ddp(tmp_path) -> None:
    """FSDP2 (gloo, CPU) shards the student over 2 processes; three SGD steps of gold's batches and loss end with the
    weights the same steps end with under DDP (gathered to one full state dict on rank 0), and the loss from hidden
    states knows that the output layer is sharded; under DDP the loss from hidden states ends with the same weights."""
    runs = {}
    for mode in ("manual_ddp", "manual_fsdp2", "manual_ddp_hidden"):
        (tmp_path / mode).mkdir()
        result = launch(tmp_path / mode, mode, timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[mode] = [torch.load(tmp_path / mode / f"rank{r}.pt") for r in (0, 1)]
    ddp, fsdp = runs["manual_ddp"], runs["manual_fsdp2"]
    assert ddp[0]["losses"] != ddp[1]["losses"]  # each process its own rows
    for rank in (0, 1):
        assert fsdp[rank]["losses"] == pytest.approx(ddp[rank]["losses"], rel=1e-5)
        assert fsdp[rank]["hidden_notes"] == ("student: its output layer is sharded (FSDP2)",)
        assert ddp[rank]["hidden_notes"] == ()
    assert fsdp[0]["state"].keys() == ddp[0]["state"].keys()
    for key, value in ddp[0]["state"].items():
        torch.testing.assert_close(fsdp[0]["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # the loss from hidden states through the DDP wrapper: the same steps
    hidden = runs["manual_ddp_hidden"]
    assert hidden[0]["used_hidden"] and not ddp[0]["used_hidden"]
    assert hidden[0]["losses"] == pytest.approx(ddp[0]["losses"], rel=1e-5)
    for key, value in ddp[0]["state"].items():
        torch.testing.assert_close(hidden[0]["state"][key], value, rtol=1e-5, atol=1e-5, msg=key)  # lr 0.5 × sum order
    initial = tiny(zoo("smollm2"), seed=0).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in ddp[0]["state"].items())  # the steps moved the weights


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP through accelerate needs 2 GPUs")
def test_fsdp2_through_accelerate_ends_with_the_weights_ddp_ends_with(tmp_path) -> None:
    """``accelerate launch --use_fsdp`` (FSDP2) shards the student over 2 GPUs; three SGD steps on the same data end
    with the weights the same steps under DDP end with (gathered to one full state dict). accelerate enables FSDP on
    GPU-like distributed types only, so this cannot run on CPUs."""
    runs = {}
    for name, extra in (("ddp", []), ("fsdp", FSDP2)):
        (tmp_path / name).mkdir()
        result = launch(tmp_path / name, "sgd", extra=extra)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = torch.load(tmp_path / name / "rank0.pt")
    assert (runs["ddp"]["fsdp"], runs["fsdp"]["fsdp"]) == (False, True)
    assert runs["fsdp"]["losses"] == pytest.approx(runs["ddp"]["losses"], rel=1e-5)
    ddp, fsdp = runs["ddp"]["state"], runs["fsdp"]["state"]
    assert fsdp.keys() == ddp.keys()
    for key, value in ddp.items():
        torch.testing.assert_close(fsdp[key], value, rtol=1e-5, atol=1e-6, msg=key)
    initial = tiny(zoo("smollm2"), seed=0).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in ddp.items())  # the steps moved the weights


@pytest.mark.slow
def test_a_teacher_sharded_over_two_processes_teaches_what_the_whole_teacher_does(tmp_path) -> None:
    """FSDP2 on the frozen teacher (gloo, CPU, under a DDP student): each process keeps about half the teacher, its
    logits equal the whole teacher's, three SGD steps end with the weights the whole teacher gives, and teacher
    samples of different lengths on the two processes finish (the processes stay in step)."""
    runs = {}
    for name in ("sgd", "sgd_sharded_teacher"):
        (tmp_path / name).mkdir()
        result = launch(tmp_path / name, name, timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = [torch.load(tmp_path / name / f"rank{r}.pt") for r in (0, 1)]
    whole, sharded = runs["sgd"][0], runs["sgd_sharded_teacher"]
    for rank in sharded:
        assert rank["teacher_local"] < 0.6 * rank["teacher_total"], rank["teacher_local"]
        assert rank["teacher_logits_gap"] < 1e-5 and len(rank["teacher_sample"]) > 0
    assert sharded[0]["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    for key, value in whole["state"].items():
        torch.testing.assert_close(sharded[0]["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
