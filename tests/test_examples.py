"""Every example starts with its launch command and loads; offline recipes name only offline assets; the smoke
recipe runs without a warning and prints a compact line per logging step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gold.cli.recipe import load_recipe
from gold.models.build import build_model, build_tokenizer
from gold.training.arguments import training_arguments

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPES = sorted(EXAMPLES.glob("*.yaml"))
HUB_RECIPES = {"llama3.2-1b_to_qwen2.5-0.5b.yaml", "qwen2.5-1.5b_to_llama3.2-1b.yaml"}


@pytest.mark.parametrize("path", [*RECIPES, *sorted((EXAMPLES / "accelerate").glob("*.yaml")),
                                  *sorted(EXAMPLES.glob("*.py"))], ids=lambda p: p.name)  # fmt: skip
def test_example_starts_with_its_launch_command(path: Path) -> None:
    first = path.read_text(encoding="utf-8").lstrip('"').splitlines()[0]
    assert any(word in first for word in ("gold ", "accelerate launch", "python -m", "hf download")), first


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(path: Path) -> None:
    config = load_recipe(path)
    assert config.training.get("output_dir", "").startswith("out/")
    if path.name not in HUB_RECIPES:
        assert (EXAMPLES.parent / config.data.path).is_file()


@pytest.mark.parametrize("name", sorted(HUB_RECIPES))
def test_hub_recipe_offline_says_how_to_get_its_models(name: str, monkeypatch) -> None:
    """The recipes name hub ids as users write them; offline and uncached (as here: tests never reach the hub) the
    error names the id and the download command."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    config = load_recipe(EXAMPLES / name)
    for spec in (config.student, config.teacher):
        with pytest.raises(ValueError, match=rf"hf download {spec.model}"):
            build_model(spec, build_tokenizer(spec), seed=0)


@pytest.mark.parametrize("name", sorted(HUB_RECIPES))
def test_hub_recipe_training_section_is_valid(name: str) -> None:
    config = load_recipe(EXAMPLES / name, ["training.bf16=false", "training.use_cpu=true"])  # CPU here
    args = training_arguments(config.training)
    assert args.max_steps == 2000 and args.gradient_accumulation_steps == 4


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_load(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(EXAMPLES / "accelerate" / name))
    assert config.num_processes == 2 and config.mixed_precision == "bf16"
    if name == "deepspeed_zero3.yaml":
        assert config.distributed_type == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == 3
    if name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2


def test_example_reward_functions_load_by_name_and_score() -> None:
    """What the OPD-RL recipe names, loaded as `gold train` would (from the working directory)."""
    import os

    from gold.training.rewards import compute_rewards, load_reward_funcs

    cwd = os.getcwd()
    os.chdir(EXAMPLES.parent)
    try:
        (func,) = load_reward_funcs(["examples.rewards:names_the_answer"])
    finally:
        os.chdir(cwd)
    rewards = compute_rewards([func], ["p"] * 3, ["124", "12 4", "x"], {"answer": ["124", "124", None]})
    assert rewards[:2, 0].tolist() == [1.0, 0.0] and rewards[2, 0].isnan()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``gold train examples/tiny_recipe.yaml`` as users run it (4 steps, a log each step): its output and folder."""
    out = tmp_path_factory.mktemp("tiny") / "out"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-m", "gold.cli", "train", "examples/tiny_recipe.yaml",
                           f"training.output_dir={out}"], cwd=EXAMPLES.parent, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done, out


def test_the_tiny_recipe_runs_without_a_warning(tiny_run) -> None:
    done, _ = tiny_run
    warned = [line for line in done.stderr.splitlines() if "Warning" in line or "warning:" in line.lower()]
    assert not warned, "\n".join(warned)


def test_each_logging_step_prints_one_compact_line_and_the_whole_dict_is_kept(tiny_run) -> None:
    """One line per step with step, loss, its terms, lr, s/step and stop rate; no dict printed; the ~26 keys of
    each log still reach trainer_state.json (and TensorBoard, which reads the same log)."""
    done, out = tiny_run
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" · ")[0] for line in lines] == [f"step {step}/4" for step in (1, 2, 3, 4)], done.stdout
    for line in lines:
        assert " · loss " in line and "(hybrid " in line and " · lr " in line and " · stop " in line, line
        assert len(line) < 120, line
    assert all(" s/step" in line for line in lines[1:]), lines
    assert "{'loss'" not in done.stdout and "'align/groups'" not in done.stdout
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 4 and all({"align/groups", "loss/hybrid", "stop_rate/dataset"} <= entry.keys()
                                   or {"align/groups", "loss/hybrid", "stop_rate/student"} <= entry.keys()
                                   for entry in steps), steps  # fmt: skip
    assert min(len(entry) for entry in steps) > 20


def test_the_trainer_build_prints_a_line_per_stage(tiny_run) -> None:
    done, _ = tiny_run
    stages = [line.split("] ", 1)[1] for line in done.stderr.splitlines() if line.startswith("gold train: [")]
    assert [stage.split(" ")[0] for stage in stages] == ["tokenizers", "loading", "building", "ready"], stages
    assert "rows checked; loading the student" in stages[0] and stages[1].startswith("loading the teacher")
