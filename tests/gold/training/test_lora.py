"""A LoRA student in GoldTrainer (``peft_config=``): only the adapters train, the loss from hidden states equals the
loss from logits whether the output layer is adapted or frozen, and checkpoints hold the adapter and resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from gold.cli.guard import check_checkpoint
from gold.config import LossConfig, RolloutConfig
from gold.losses.head import output_head
from gold.models.lora import is_peft_model, peft_student
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, tiny, training_args
from tests.gold.models.test_lora import randomize_adapters

pytest.importorskip("peft")

ATTENTION = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
WITH_HEAD = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "lm_head"]}


def student(tokenizer, *, tied: bool = True):
    """The tiny student; untied (its own output matrix) where the output layer is to be adapted."""
    model = tiny(tokenizer, seed=0)
    if tied:
        return model
    model.config.tie_word_embeddings = False
    torch.manual_seed(0)
    return LlamaForCausalLM(model.config)


def lora_trainer(tmp_path, student_tokenizer, teacher_tokenizer, *, peft=ATTENTION, tied=True, loss=None, **args):
    rollout = RolloutConfig(lmbda=0.5, max_completion_length=8, temperature=1.0)
    return GoldTrainer(student(student_tokenizer, tied=tied), tiny(teacher_tokenizer, seed=1),
                       args=training_args(tmp_path, **args), train_dataset=ROWS, student_tokenizer=student_tokenizer,
                       teacher_tokenizer=teacher_tokenizer, loss=loss or LossConfig(), rollout=rollout,
                       peft_config=peft)  # fmt: skip


def adapters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize("tied,peft", [(True, ATTENTION), (False, WITH_HEAD)], ids=["head-frozen", "head-adapted"])
def test_only_the_adapters_train(tmp_path, student_tokenizer, teacher_tokenizer, tied, peft) -> None:
    trainer = lora_trainer(tmp_path, student_tokenizer, teacher_tokenizer, peft=peft, tied=tied, max_steps=3)
    model = trainer.model
    assert is_peft_model(model)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    norms: dict[str, list[float]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.register_hook(lambda grad, name=name: norms.setdefault(name, []).append(float(grad.norm())))
    trainer.train()
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(param, start[name]), f"{name} did not train"
        else:
            assert torch.equal(param, start[name]), f"base weight {name} changed"  # bit-identical
    lora_b = [name for name in norms if ".lora_B." in name]
    assert len(lora_b) == 2 * 1 + (not tied) and all(max(norms[n]) > 0 for n in lora_b)  # q, v (1 layer), lm_head
    assert all(max(values) > 0 for values in norms.values())  # A too: B is no longer zero after the first step
    assert set(norms) == {name for name in start if "lora_" in name}


def test_an_adapted_output_layer_is_its_merged_matrix_in_values_and_gradients(student_tokenizer) -> None:
    model = peft_student(student(student_tokenizer, tied=False).double(), WITH_HEAD)  # float64: sums over 49k rows
    randomize_adapters(model)
    head, why = output_head(model)
    assert head is not None and head.lora_a is not None and head.requires_grad, why
    layer = model.get_output_embeddings()
    base, down, up = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    hidden = torch.randn(3, 5, base.shape[1], dtype=torch.float64, requires_grad=True)  # (B, T, H)
    weights = torch.randn(3, 5, base.shape[0], dtype=torch.float64)  # (B, T, V): a loss that reads every logit
    found = head.logits(hidden)
    (found * weights).sum().backward()
    grads = [t.grad.clone() for t in (hidden, down, up)]
    for t in (hidden, down, up):
        t.grad = None
    expected = F.linear(hidden, base + (up @ down) * layer.scaling["default"])  # the reference merges
    (expected * weights).sum().backward()
    torch.testing.assert_close(found, expected.float(), rtol=1e-6, atol=1e-6)  # the head's rows are float32
    for got, want in zip(grads, (hidden.grad, down.grad, up.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert base.grad is None and not head.detach().requires_grad


def test_an_adapter_with_dropout_on_the_output_layer_takes_the_logits(student_tokenizer) -> None:
    model = peft_student(student(student_tokenizer, tied=False), {**WITH_HEAD, "dropout": 0.1})
    head, why = output_head(model)
    assert head is None and "dropout 0.1" in why and "student.peft.dropout: 0.0" in why


@pytest.mark.parametrize("tied,peft", [(True, ATTENTION), (False, WITH_HEAD)], ids=["head-frozen", "head-adapted"])
def test_the_run_from_hidden_states_equals_the_run_from_logits(tmp_path, student_tokenizer, teacher_tokenizer,
                                                               tied, peft) -> None:  # fmt: skip
    runs = {}
    for mode in ("never", "always"):
        loss = LossConfig(implementation="torch", hidden_states=mode, chunk_groups=5, span_weight=0.2)  # type: ignore[arg-type]
        trainer = lora_trainer(tmp_path / mode, student_tokenizer, teacher_tokenizer, peft=peft, tied=tied, loss=loss,
                               optim="sgd", learning_rate=0.5, max_steps=3)  # fmt: skip
        trainer.train()
        plan = trainer.hidden_plan()
        assert (plan.student is not None) == (mode == "always") and not plan.notes
        if mode == "always":
            assert (plan.student.lora_a is not None) == (not tied)
        runs[mode] = ([e for e in trainer.state.log_history if "loss" in e], adapters(trainer.model))
    (off_log, off_weights), (on_log, on_weights) = runs["never"], runs["always"]
    for off, on in zip(off_log, on_log, strict=True):
        for key in ("loss", "loss/hybrid", "loss/span", "grad_norm"):
            assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-6), key
    for name, weight in off_weights.items():
        torch.testing.assert_close(on_weights[name], weight, rtol=1e-4, atol=1e-6)


def test_checkpoints_hold_the_adapter_and_resume_where_the_run_was(tmp_path, student_tokenizer,
                                                                  teacher_tokenizer) -> None:  # fmt: skip
    straight = lora_trainer(tmp_path / "a", student_tokenizer, teacher_tokenizer, max_steps=4)
    straight.train()
    first = lora_trainer(tmp_path / "b", student_tokenizer, teacher_tokenizer, max_steps=4, save_strategy="steps",
                         save_steps=2)  # fmt: skip
    first.train()
    checkpoint = tmp_path / "b" / "run" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "adapter_config.json").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # the base weights are not copied into every checkpoint
    assert check_checkpoint(checkpoint) == checkpoint
    resumed = lora_trainer(tmp_path / "b", student_tokenizer, teacher_tokenizer, max_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e][-2:] for t in (straight, resumed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, weight in adapters(straight.model).items():
        torch.testing.assert_close(adapters(resumed.model)[name], weight, rtol=1e-5, atol=1e-7)
