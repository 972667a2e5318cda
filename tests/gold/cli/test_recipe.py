"""Config validation, YAML round-trip and overrides."""

from __future__ import annotations

import pytest

from gold.cli.recipe import RecipeError, apply_overrides, config_from_dict, dump_recipe, load_recipe
from gold.config import GoldConfig, LossConfig, ModelConfig, RolloutConfig

RAW = {
    "student": {"model": "tiny", "tokenizer": "smollm2", "tiny": {"hidden_size": 16, "layers": 1}},
    "teacher": {"model": "tiny", "tokenizer": "mistral-v1"},
    "data": {"path": "rows.jsonl"},
    "loss": {"beta": 0.2, "uld_weight": 0.5},
    "rollout": {"lmbda": 1.0, "max_completion_length": 8},
    "training": {"max_steps": 2, "learning_rate": 0.01},
}


def test_yaml_round_trip(tmp_path) -> None:
    config = config_from_dict(RAW)
    path = tmp_path / "recipe.yaml"
    dump_recipe(config, path)
    assert load_recipe(path) == config
    assert config.loss == LossConfig(beta=0.2, uld_weight=0.5)
    assert config.rollout.lmbda == 1.0


def test_overrides_reach_nested_fields(tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    dump_recipe(config_from_dict(RAW), path)
    config = load_recipe(path, ["loss.beta=0.7", "rollout.seq_kd=true", "training.max_steps=9",
                                "student.tiny.hidden_size=32"])  # fmt: skip
    assert config.loss.beta == 0.7 and config.rollout.seq_kd is True
    assert config.training["max_steps"] == 9 and config.student.tiny == {"hidden_size": 32, "layers": 1}


def test_exponent_floats_are_floats(tmp_path) -> None:
    """YAML 1.1 reads ``5e-5`` as a string, which TrainingArguments then compares with a float and crashes."""
    path = tmp_path / "recipe.yaml"
    path.write_text("student: {model: tiny, tokenizer: smollm2}\nteacher: {model: tiny, tokenizer: smollm2}\n"
                    "data: {path: rows.jsonl}\ntraining: {learning_rate: 1e-3, weight_decay: 2E-1}\n")  # fmt: skip
    config = load_recipe(path, ["training.adam_epsilon=-1e-8", "loss.beta=5e-1"])
    assert config.training == {"learning_rate": 1e-3, "weight_decay": 0.2, "adam_epsilon": -1e-8}
    assert config.loss.beta == 0.5
    assert load_recipe(path, ["training.run_name=1e3x"]).training["run_name"] == "1e3x"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**RAW, "loss": {"betta": 0.5}}, "unknown key 'betta' in loss (did you mean 'beta'?)"),
        ({**RAW, "rollouts": {}}, "unknown key 'rollouts' in the recipe (did you mean 'rollout'?)"),
        ({**RAW, "loss": {"beta": 1.5}}, "LossConfig.beta must be in [0, 1], got 1.5"),
        ({**RAW, "rollout": {"lmbda": -0.1}}, "RolloutConfig.lmbda must be in [0, 1], got -0.1"),
        ({**RAW, "rollout": {"engine": "ray"}}, "RolloutConfig.engine must be 'hf' or 'vllm'"),
        (
            {**RAW, "rollout": {"vllm_mode": "remote"}},
            "RolloutConfig.vllm_mode must be 'colocate' or 'server', got 'remote'",
        ),
        (
            {**RAW, "rollout": {"vllm_enable_sleep_mode": True}},
            "vllm_enable_sleep_mode must stay unset without use_vllm",
        ),
        ({**RAW, "rollout": {"use_vllm": True, "vllm_structured_outputs_regex": "("}}, "must be a regular expression"),
        ({**RAW, "rollout": {"vllm_sync_frequency": 0}}, "vllm_sync_frequency must be >= 1, got 0"),
        ({k: v for k, v in RAW.items() if k != "data"}, "no 'data' section"),
        ({**RAW, "teacher": {"model": "tiny"}}, "needs ModelConfig.tokenizer"),
        ({**RAW, "loss": ["beta"]}, "loss must be a mapping"),
        ({**RAW, "rollout": {"seq_kd": "maybe"}}, "rollout.seq_kd must be bool, got 'maybe'"),
        ({**RAW, "loss": {"beta": True}}, "loss.beta must be float, got True"),
        ({**RAW, "rollout": {"max_completion_length": 2.5}}, "rollout.max_completion_length must be int, got 2.5"),
        ({**RAW, "loss": {"hybrid_weight": float("inf")}}, "loss.hybrid_weight must be a finite number, got inf"),
        ({**RAW, "training": {"max_steps": 0}}, "training.max_steps must be a positive integer"),
        ({**RAW, "training": {"max_steps": -3}}, "training.max_steps must be a positive integer"),
        (
            {**RAW, "student": {"model": "tiny", "tokenizer": "smollm2", "tiny": {"num_hidden_layers": 2}}},
            "ModelConfig.tiny has no key 'num_hidden_layers'; it takes hidden_size, layers, heads",
        ),
        (
            {**RAW, "student": {"model": "tiny", "tokenizer": "smollm2", "tiny": {"hidden_size": 30, "heads": 4}}},
            "hidden_size=30 must be a multiple of heads=4",
        ),
    ],
)
def test_bad_values_name_the_value(raw, message) -> None:
    with pytest.raises(RecipeError) as err:
        config_from_dict(raw)
    assert message in str(err.value)


def test_malformed_override() -> None:
    with pytest.raises(RecipeError, match=r"section\.key=value"):
        apply_overrides(RAW, ["beta0.3"])


def test_missing_recipe_file(tmp_path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="num_generations must be >= 1, got 0"):
        RolloutConfig(num_generations=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelConfig(model="x", dtype="float64")  # type: ignore[arg-type]
    assert isinstance(config_from_dict(RAW), GoldConfig)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path) -> None:
    from gold.cli.recipe import load_recipe

    recipe = tmp_path / "twice.yaml"
    recipe.write_text("student: {model: tiny, tokenizer: smollm2}\nteacher: {model: tiny, tokenizer: smollm2}\n"
                      "data: {path: x.jsonl}\nloss: {beta: 0.1}\nloss: {beta: 0.9}\n")  # fmt: skip
    with pytest.raises(RecipeError, match=r"key 'loss' appears twice in one mapping \(line 5\)"):
        load_recipe(recipe)
