"""TRL's call shapes (issue 30, item 3): models by id with init kwargs, ``processing_class`` /
``teacher_processing_class``, tokenizers read from a model's folder, ``eval_dataset`` with ``evaluate()``,
conversational prompt–completion rows, and model sections passing ``attn_implementation`` / ``revision`` /
``torch_dtype``."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch

from gold.cli.recipe import RecipeError
from gold.config import ModelConfig, RolloutConfig
from gold.data.files import examples_from_rows
from gold.models.build import build_model
from gold.training.trainer import GoldTrainer
from tests.gold.conftest import ROWS, tiny, training_args

CHAT_ROWS = [
    {"prompt": [{"role": "user", "content": f"What is {a} plus 1?"}],
     "completion": [{"role": "assistant", "content": f"It is {a + 1}."}]}
    for a in range(4)
]  # fmt: skip


def saved(tmp_path, name, tokenizer, seed=0):
    folder = tmp_path / name
    tiny(tokenizer, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_models_by_folder_id_with_init_kwargs_and_tokenizers_from_their_folders(tmp_path, student_tokenizer,
                                                                               teacher_tokenizer) -> None:  # fmt: skip
    student, teacher = saved(tmp_path, "student", student_tokenizer), saved(tmp_path, "teacher", teacher_tokenizer, 1)
    init = {"torch_dtype": "torch.float32", "attn_implementation": "eager"}
    trainer = GoldTrainer(str(student), teacher_model=str(teacher), args=training_args(tmp_path, max_steps=1),
                          train_dataset=ROWS, model_init_kwargs=init)  # fmt: skip
    assert trainer.model.config._attn_implementation == "eager" and trainer.model.dtype == torch.float32
    assert trainer.student_tokenizer.vocab_size == student_tokenizer.vocab_size
    assert trainer.teacher.tokenizer.vocab_size == teacher_tokenizer.vocab_size
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_processing_class_is_the_student_tokenizer_and_a_teacher_reads_its_own(tmp_path, student_tokenizer,
                                                                               teacher_tokenizer) -> None:  # fmt: skip
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(saved(tmp_path, "teacher", teacher_tokenizer))  # name_or_path set
    trainer = GoldTrainer(tiny(student_tokenizer), teacher_model=teacher, args=training_args(tmp_path),
                          train_dataset=ROWS, processing_class=student_tokenizer)  # fmt: skip
    assert trainer.student_tokenizer is student_tokenizer and trainer.processing_class is student_tokenizer
    assert trainer.teacher.tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path),
                          train_dataset=ROWS, processing_class=student_tokenizer,
                          teacher_processing_class=teacher_tokenizer)  # fmt: skip
    assert trainer.teacher.tokenizer is teacher_tokenizer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(student_tokenizer="a", processing_class="b"), "student_tokenizer= and processing_class= name the same"),
        (dict(model_init_kwargs={"dtype": "float32"}), "model_init_kwargs is set but model is already a model"),
        (dict(teacher=None), "no teacher: pass teacher="),
    ],
)
def test_contradicting_or_unusable_call_shapes_are_refused(tmp_path, student_tokenizer, teacher_tokenizer, kwargs,
                                                           message) -> None:  # fmt: skip
    settings = dict(student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                    teacher=tiny(teacher_tokenizer))  # fmt: skip
    settings.update(kwargs)
    teacher = settings.pop("teacher")
    with pytest.raises(ValueError, match=message):
        GoldTrainer(tiny(student_tokenizer), teacher, args=training_args(tmp_path), train_dataset=ROWS, **settings)


def test_init_kwargs_gold_does_not_pass_on_are_refused_by_name() -> None:
    from gold.training.call_shapes import init_spec

    with pytest.raises(ValueError, match=r"model_init_kwargs has 'device_map', 'quantization_config', which gold"):
        init_spec("org/name", {"device_map": "auto", "quantization_config": {}, "dtype": "float32"}, what="model")
    assert init_spec("org/name", '{"torch_dtype": "torch.float16"}', what="model").dtype == "float16"  # TRL's JSON


def test_a_model_object_without_a_folder_needs_its_tokenizer(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    message = r"teacher_model is a model object .* teacher_tokenizer= \(TRL: teacher_processing_class=\)"
    with pytest.raises(ValueError, match=message):
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path),
                    train_dataset=ROWS, student_tokenizer=student_tokenizer)  # fmt: skip


def test_eval_dataset_and_evaluate_return_golds_held_out_metrics(tmp_path, student_tokenizer,
                                                                 teacher_tokenizer) -> None:  # fmt: skip
    args = training_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2)
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=args, train_dataset=ROWS,
                          eval_dataset=ROWS[:3], student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer,
                          rollout=RolloutConfig(max_completion_length=8))  # fmt: skip
    mode = trainer.model.training
    before = trainer.evaluate()
    assert {"eval_forward_kl_bits_per_byte", "eval_reverse_kl_bits_per_byte", "eval_stop_rate"} <= set(before)
    assert before["eval_forward_kl_bits_per_byte"] > 0 and trainer.model.training is mode
    trainer.train()  # eval_strategy "steps": Trainer calls evaluate() at step 2
    logged = [e for e in trainer.state.log_history if "eval_forward_kl_bits_per_byte" in e]
    assert [e["step"] for e in logged] == [2]  # once, not again at the epoch's end
    assert logged[0]["eval_forward_kl_bits_per_byte"] != before["eval_forward_kl_bits_per_byte"]
    other = trainer.evaluate(ROWS[3:5], metric_key_prefix="test")
    assert "test_forward_kl_bits_per_byte" in other


def test_evaluate_without_rows_says_what_to_pass(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="pass eval_dataset="):
        trainer.evaluate()


def test_conversational_prompt_completion_rows(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    examples = examples_from_rows(CHAT_ROWS)
    assert list(examples[0].prompt) == [{"role": "user", "content": "What is 0 plus 1?"}]
    assert examples[0].completion == "It is 1."
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path, max_steps=1),
                          train_dataset=CHAT_ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


@pytest.mark.parametrize(
    ("completion", "message"),
    [
        ([{"role": "user", "content": "x"}], "must be one assistant turn"),
        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "must be one assistant turn"),
    ],
)
def test_a_conversational_completion_that_is_not_one_assistant_turn_is_refused(completion, message) -> None:
    with pytest.raises(ValueError, match=message):
        examples_from_rows([{"prompt": [{"role": "user", "content": "q"}], "completion": completion}])
    with pytest.raises(ValueError, match="the prompt as chat turns too"):
        examples_from_rows([{"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}])


def test_model_sections_pass_attn_implementation_and_torch_dtype(tmp_path, student_tokenizer) -> None:
    folder = saved(tmp_path, "student", student_tokenizer)
    spec = ModelConfig(model=str(folder), torch_dtype="bfloat16", attn_implementation="eager")
    model = build_model(spec, student_tokenizer, seed=0)
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    tiny_spec = ModelConfig(model="tiny", tokenizer=str(folder), attn_implementation="eager")
    assert build_model(tiny_spec, student_tokenizer, seed=0).config._attn_implementation == "eager"
    with pytest.raises(RecipeError, match=r"revision 'v2' is for hub ids"):
        build_model(ModelConfig(model=str(folder), revision="v2"), student_tokenizer, seed=0)


def test_a_recipe_model_section_takes_the_from_pretrained_keys(tmp_path) -> None:
    from gold.cli.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    student = "student: {model: tiny, tokenizer: smollm2, torch_dtype: float32, attn_implementation: eager}\n"
    recipe.write_text(student + "teacher: {model: org/name, revision: main}\ndata: {path: x.jsonl}\n", encoding="utf-8")
    config = load_recipe(recipe)
    assert (config.student.dtype, config.student.attn_implementation) == ("float32", "eager")
    assert config.teacher.revision == "main"


def test_the_offline_hint_names_a_command_the_installed_hub_ships() -> None:
    from gold.models.hub import _explain

    line = str(_explain("model", "org/name", OSError("We couldn't connect to the hub")))
    assert "hf download org/name" in line
    assert "hf" in {point.name for point in entry_points(group="console_scripts")}  # huggingface_hub's CLI
