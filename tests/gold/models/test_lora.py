"""LoRA students (gold.models.lora): the recipe's names reach peft, a tied output layer is never adapted, and the
merged weights (what vLLM, the colocated engine's start and `gold export` read) are the adapted model's, under the
base model's names, without touching the model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from gold.config import ModelConfig
from gold.models.lora import is_lora_layer, is_peft_model, lora_config, merged_state_dict, peft_student, save_merged
from gold.teacher.config import TeacherConfig

peft = pytest.importorskip("peft")


def llama(*, tied: bool, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    return LlamaForCausalLM(config)


def randomize_adapters(model, seed: int = 1) -> None:
    """B starts at zero (the adapted model equals its base): give every factor values, so merging has work to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def test_the_recipe_names_reach_lora_config() -> None:
    config = lora_config({"r": 4, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj"], "use_rslora": True})
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (4, 16, 0.1, True)
    assert config.target_modules == {"q_proj"} and config.task_type == "CAUSAL_LM"
    with pytest.raises(ValueError, match=r"student.peft \{'rank': 4\}.*give LoraConfig fields"):
        lora_config({"rank": 4})


def test_the_recipe_section_is_checked_and_a_teacher_has_none() -> None:
    assert ModelConfig(model="x", peft={"r": 4, "target_modules": "all-linear"}).peft == {
        "r": 4, "target_modules": "all-linear"}  # fmt: skip
    for bad, match in [({"r": 0}, "peft.r must be the adapter rank"), ({"dropout": 1.0}, r"peft.dropout .*\[0, 1\)"),
                       ({"target_modules": []}, "peft.target_modules"), ({}, "non-empty mapping")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ModelConfig(model="x", peft=bad)
    with pytest.raises(ValueError, match=r"teacher\.peft: the teacher is frozen"):
        TeacherConfig(model="x", peft={"r": 4})


def test_only_the_adapters_require_gradients() -> None:
    model = peft_student(llama(tied=True), {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert is_peft_model(model) and not is_peft_model(model.get_base_model())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    with pytest.raises(ValueError, match="already a PeftModel"):
        peft_student(model, {"r": 4})


def test_a_tied_output_layer_is_not_adapted_and_the_model_is_given_back_whole() -> None:
    model = llama(tied=True)
    names = [name for name, _ in model.named_parameters()]
    with pytest.raises(ValueError, match=r"tied to its input embedding.*leave the output layer"):
        peft_student(model, {"r": 4, "target_modules": ["q_proj", "lm_head"]})
    assert [name for name, _ in model.named_parameters()] == names
    assert not any(is_lora_layer(module) for module in model.modules())


@pytest.mark.parametrize("tied,targets", [(True, ["q_proj", "v_proj", "down_proj"]), (False, ["q_proj", "lm_head"])],
                         ids=["head-frozen", "head-adapted"])  # fmt: skip
def test_merged_weights_are_the_adapted_model_under_the_base_names(tmp_path, tied, targets) -> None:
    base = llama(tied=tied)
    names = set(base.state_dict())
    model = peft_student(base, {"r": 4, "alpha": 8, "target_modules": targets})
    randomize_adapters(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits  # (2, 9, 97)
    merged = merged_state_dict(model)
    assert set(merged) == names
    save_merged(model, tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not is_peft_model(plain) and not any(is_lora_layer(m) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, expected, rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():  # nothing was merged into the model itself
        assert torch.equal(param, before[name]), name


def test_other_tuners_merge_through_peft() -> None:
    model = peft.get_peft_model(llama(tied=True), peft.IA3Config(target_modules=["k_proj", "down_proj"],
                                                                 feedforward_modules=["down_proj"]))  # fmt: skip
    randomize_adapters(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_" in name:
                param.add_(torch.rand(param.shape) * 0.5)
    ids = torch.randint(0, 97, (2, 9))
    plain = llama(tied=True, seed=5)
    plain.load_state_dict(merged_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
