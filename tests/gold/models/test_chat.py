"""Chat templates per side and the warning when the two sides render chat prompts unequally."""

from __future__ import annotations

import copy

import pytest

from gold.cli.recipe import RecipeError
from gold.config import ModelConfig
from gold.data.examples import Example, prompt_ids
from gold.data.rendering import unequal_rendering
from gold.models.build import build_tokenizer
from gold.models.chat import BUILTIN_TEMPLATES, set_chat_template
from gold.models.stops import stop_rule
from gold.training.trainer import GoldTrainer, UnequalRenderingWarning
from tests.conftest import zoo
from tests.gold.conftest import ROWS, tiny, training_args

CHAT = Example(({"role": "user", "content": "Say hi"},), "Hi there")


def test_unequal_rendering_is_warned_once_with_both_renderings(tmp_path, student_tokenizer, teacher_tokenizer):
    """SmolLM2 has ChatML; Mistral v1 here has none and would see 'Assistant:Hi there'."""
    message = unequal_rendering(student_tokenizer, teacher_tokenizer, [CHAT])
    assert message is not None
    assert "the teacher has no chat template" in message and "teacher.chat_template" in message
    assert "<|im_start|>assistant\\nHi there" in message and "Assistant:Hi there" in message
    assert unequal_rendering(student_tokenizer, teacher_tokenizer, [Example("Q:", " A")]) is None  # text prompts
    with pytest.warns(UnequalRenderingWarning) as caught:
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path), train_dataset=ROWS,
                    student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    assert len([w for w in caught if w.category is UnequalRenderingWarning]) == 1


def test_a_builtin_template_renders_and_sets_the_end_token() -> None:
    gemma = copy.deepcopy(zoo("gemma-3"))  # Gemma-3 base ships no chat template
    assert not gemma.chat_template and stop_rule(gemma).end_id == gemma.eos_token_id
    set_chat_template(gemma, "gemma")
    text = gemma.decode(prompt_ids(gemma, CHAT.prompt))
    assert text == "<bos><start_of_turn>user\nSay hi<end_of_turn>\n<start_of_turn>model\n"
    # the token the template writes after the assistant's content is now this side's end token
    assert gemma.convert_ids_to_tokens(stop_rule(gemma).end_id) == "<end_of_turn>"
    smollm2 = copy.deepcopy(zoo("smollm2"))
    assert unequal_rendering(smollm2, gemma, [CHAT]) is None


def test_bad_chat_templates_are_named(tmp_path) -> None:
    mistral = copy.deepcopy(zoo("mistral-v1"))
    with pytest.raises(ValueError, match=r"chat template 'chatml' needs the special tokens \['<\|im_start\|>'"):
        set_chat_template(mistral, "chatml")
    with pytest.raises(ValueError, match=r"neither a built-in \(chatml, llama-3, gemma, mistral\) nor an existing"):
        set_chat_template(mistral, "chatmll")
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    assert set_chat_template(mistral, str(template)).chat_template.startswith("{% for m in messages %}")
    with pytest.raises(RecipeError, match="needs the special tokens"):
        build_tokenizer(ModelConfig(model="tiny", tokenizer="mistral-v1", chat_template="llama-3"))
    assert set(BUILTIN_TEMPLATES) == {"chatml", "llama-3", "gemma", "mistral"}
    with pytest.raises(ValueError, match="chat_template is empty"):
        ModelConfig(model="tiny", tokenizer="mistral-v1", chat_template="")


def test_the_mistral_template_renders_v1_instructions() -> None:
    """The tiny recipe's teacher (Mistral v1, no template of its own) renders chat rows as Mistral does."""
    mistral = build_tokenizer(ModelConfig(model="tiny", tokenizer="mistral-v1", chat_template="mistral"))
    assert mistral.decode(prompt_ids(mistral, CHAT.prompt)) == "<s>[INST] Say hi [/INST]"
    assert mistral.convert_ids_to_tokens(stop_rule(mistral).end_id) == "</s>"


def test_recipe_chat_template_reaches_the_tokenizer() -> None:
    llama = build_tokenizer(ModelConfig(model="tiny", tokenizer="llama-3", chat_template="llama-3"))
    rendered = llama.decode(prompt_ids(llama, CHAT.prompt))
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSay hi<|eot_id|>")
    assert zoo("llama-3").chat_template is None  # the zoo's cached tokenizer object is left alone
