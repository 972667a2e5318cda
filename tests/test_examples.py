"""Every example starts with its launch command and loads; offline recipes name only offline assets."""

from __future__ import annotations

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
