"""Examples, per-side prompts, exact completion bytes and the same-bytes check."""

from __future__ import annotations

import pytest

from alignment import encode_continuation, encode_text, token_bytes_table
from gold.config import DataConfig
from gold.data import (
    CompletionBytesError,
    DataError,
    Example,
    check_same_bytes,
    completion_text,
    example_from_row,
    examples_from_rows,
    plain_prompt,
    prompt_ids,
    side_inputs,
)

CONFIG = DataConfig(path="x.jsonl")


def test_rows_of_both_formats() -> None:
    rows = [
        {"prompt": "Q?", "completion": "A."},
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
    ]
    first, second = examples_from_rows(rows)
    assert first == Example("Q?", "A.")
    assert second.completion == "A." and second.prompt == ({"role": "user", "content": "Q?"},)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "Q?", "answer": "A."}, "row 3 has fields ['answer', 'question']; it needs 'prompt'"),
        ({"prompt": "Q?", "completion": ""}, "row 3: the completion is empty"),
        ({"prompt": "", "completion": "A."}, "row 3: the prompt is empty"),
        ({"messages": [{"role": "user", "content": "Q?"}]}, "row 3: the last message must be the assistant's"),
    ],
)
def test_bad_rows_are_named(row, message) -> None:
    with pytest.raises(DataError) as err:
        example_from_row(row, index=3, config=CONFIG)
    assert message in str(err.value)


def test_custom_field_names() -> None:
    config = DataConfig(path="x", prompt_field="question", completion_field="answer")
    assert example_from_row({"question": "Q", "answer": "A"}, index=0, config=config) == Example("Q", "A")


def test_each_side_renders_its_own_prompt(student_tokenizer, teacher_tokenizer) -> None:
    messages = ({"role": "user", "content": "Say hi"},)
    # SmolLM2 ships a ChatML template; Mistral v1 here has none and gets the plain format after BOS
    student = student_tokenizer.decode(prompt_ids(student_tokenizer, messages))
    assert "<|im_start|>user\nSay hi<|im_end|>" in student and student.rstrip().endswith("assistant")
    teacher = prompt_ids(teacher_tokenizer, messages)
    assert teacher[0] == teacher_tokenizer.bos_token_id
    assert plain_prompt(messages) == "User: Say hi\n\nAssistant:"
    assert teacher[1:] == encode_text(teacher_tokenizer, "User: Say hi\n\nAssistant:")


def test_completion_text_cuts_at_eos_and_partial_characters(student_tokenizer) -> None:
    ids = encode_continuation(student_tokenizer, "ok 👍🏽")
    table = token_bytes_table(student_tokenizer)
    # drop the last token: the emoji's bytes are cut mid-character and its partial tokens go too
    kept, text = completion_text(student_tokenizer, ids[:-1])
    assert kept == ids[: len(kept)] and len(kept) < len(ids) - 1  # the partial tokens were dropped
    assert text.encode() == table.sequence_bytes(kept, starts_text=False)
    assert "ok 👍🏽".startswith(text) and text.startswith("ok") and text != "ok 👍🏽"
    full, full_text = completion_text(student_tokenizer, [*ids, student_tokenizer.eos_token_id, *ids])
    assert full == ids and full_text == "ok 👍🏽"


def test_completion_text_keeps_a_real_leading_space(teacher_tokenizer) -> None:
    ids = encode_continuation(teacher_tokenizer, " It says")
    assert completion_text(teacher_tokenizer, ids)[1] == " It says"
    assert completion_text(teacher_tokenizer, encode_continuation(teacher_tokenizer, "It says"))[1] == "It says"


def test_same_bytes_check_fires_on_other_bytes(teacher_tokenizer) -> None:
    text = "It says moo."
    check_same_bytes(teacher_tokenizer, encode_continuation(teacher_tokenizer, text), text, index=0)
    doctored = encode_continuation(teacher_tokenizer, "It says baa.")
    with pytest.raises(CompletionBytesError, match=r"example 5: the teacher's completion tokens spell b'baa.'"):
        check_same_bytes(teacher_tokenizer, doctored, text, index=5)


def test_side_inputs_layout() -> None:
    side = side_inputs([[1, 2, 3], [4]], [[5], [6, 7, 8]], pad_id=0)
    assert side.prompt_width == 3
    assert side.input_ids.tolist() == [[1, 2, 3, 5, 0, 0], [0, 0, 4, 6, 7, 8]]
    assert side.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert side.position_ids[1].tolist() == [0, 0, 0, 1, 2, 3]
    assert side.logits_to_keep == 4
