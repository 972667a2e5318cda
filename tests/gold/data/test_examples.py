"""Examples, per-side prompts, exact completion bytes and the same-bytes check."""

from __future__ import annotations

import pytest

from alignment import encode_continuation, encode_text, token_bytes_table
from gold.config import DataConfig
from gold.data.examples import (
    CompletionBytesError,
    DataError,
    Example,
    check_same_bytes,
    decode_completion,
    leading_special_ids,
    move_seam_whitespace,
    plain_prompt,
    prompt_ids,
    side_inputs,
)
from gold.data.files import example_from_row, examples_from_rows
from tests.conftest import zoo

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


def test_decode_cuts_only_a_trailing_partial_character(student_tokenizer) -> None:
    ids = encode_continuation(student_tokenizer, "ok 👍🏽")
    table = token_bytes_table(student_tokenizer)
    # drop the last token: the emoji's bytes are cut mid-character and its partial tokens go too
    decoded = decode_completion(student_tokenizer, ids[:-1])
    kept = decoded.ids
    assert kept == ids[: len(kept)] and len(kept) < len(ids) - 1  # the partial tokens were dropped
    assert decoded.cut_tokens == len(ids) - 1 - len(kept) and decoded.invalid_bytes == 0
    assert decoded.text.encode() == table.sequence_bytes(kept, starts_text=False)
    assert "ok 👍🏽".startswith(decoded.text) and decoded.text.startswith("ok") and decoded.text != "ok 👍🏽"
    whole = decode_completion(student_tokenizer, ids)
    assert whole.ids == ids and whole.text == "ok 👍🏽" and whole.cut_tokens == 0


def test_decode_keeps_tokens_after_an_interior_invalid_byte(student_tokenizer) -> None:
    """One invalid byte inside a sample used to drop everything after it; now it reads as U+FFFD and is counted."""
    table = token_bytes_table(student_tokenizer)
    lone = next(i for i in range(len(table.offsets) - 1) if table.token_bytes(i) == b"\xe4")  # a lead byte alone
    ids = [*encode_continuation(student_tokenizer, "ab"), lone, *encode_continuation(student_tokenizer, " cd ef")]
    decoded = decode_completion(student_tokenizer, ids)
    assert decoded.ids == ids and decoded.cut_tokens == 0
    assert decoded.text == "ab\ufffd cd ef" and decoded.invalid_bytes == 1
    # a lone lead byte at the very end is an unfinished character: cut, not replaced
    tail = decode_completion(student_tokenizer, [*encode_continuation(student_tokenizer, "ab"), lone])
    assert tail.text == "ab" and tail.cut_tokens == 1 and tail.invalid_bytes == 0


def test_decode_keeps_a_real_leading_space(teacher_tokenizer) -> None:
    ids = encode_continuation(teacher_tokenizer, " It says")
    assert decode_completion(teacher_tokenizer, ids).text == " It says"
    assert decode_completion(teacher_tokenizer, encode_continuation(teacher_tokenizer, "It says")).text == "It says"


def test_prompt_trailing_whitespace_moves_into_the_completion(student_tokenizer) -> None:
    """'Answer: ' + 'Paris' would score 'Paris' after a lone space token, a split no model produces in text."""
    example = example_from_row({"prompt": "Answer: ", "completion": "Paris"}, index=0, config=CONFIG)
    assert example == Example("Answer:", " Paris")
    joint = encode_continuation(student_tokenizer, "Answer: Paris")
    split = encode_text(student_tokenizer, example.prompt) + encode_continuation(student_tokenizer, example.completion)
    assert split == joint  # now the pieces are exactly the whole text's tokens
    assert move_seam_whitespace("Q?\t ", "A") == ("Q?", "\t A")
    assert Example("Q?\n", "A") == Example("Q?\n", "A") and Example("Q?\n", "A").prompt == "Q?\n"  # newlines stay
    messages = ({"role": "user", "content": "Q "},)
    assert move_seam_whitespace(messages, "A") == (messages, "A")  # a chat template's own format stays


def test_plain_prompts_follow_the_tokenizers_special_token_policy(student_tokenizer, teacher_tokenizer) -> None:
    """SmolLM2's bos_token is the chat marker <|im_start|>, which its tokenizer never adds to plain text."""
    assert student_tokenizer.bos_token == "<|im_start|>" and leading_special_ids(student_tokenizer) == []
    assert prompt_ids(student_tokenizer, "Q?") == encode_text(student_tokenizer, "Q?")
    assert leading_special_ids(teacher_tokenizer) == [teacher_tokenizer.bos_token_id]  # Mistral adds <s>
    assert prompt_ids(teacher_tokenizer, "Q?")[0] == teacher_tokenizer.bos_token_id
    # a text scored from its start, with no BOS to start from, starts from EOS (the document separator)
    assert prompt_ids(student_tokenizer, "") == [student_tokenizer.eos_token_id]


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


def test_decode_cuts_again_when_a_token_spans_a_character_boundary() -> None:
    """Qwen2.5 has a token b'\\x92\\xe1\\x9e' that ends one character and starts the next: cut after it, the
    token before still ends inside a character, so that one goes too (no U+FFFD is ever invented)."""
    qwen = zoo("qwen2.5")
    table = token_bytes_table(qwen)
    lead = next(i for i in range(table.vocab_size) if table.known_mask[i] and table.token_bytes(i) == b"\xe1\x9e")
    spanning = next(
        i for i in range(table.vocab_size) if table.known_mask[i] and table.token_bytes(i) == b"\x92\xe1\x9e"
    )
    ok = encode_continuation(qwen, "ok")
    decoded = decode_completion(qwen, [*ok, lead, spanning])
    assert decoded.text == "ok" and decoded.ids == ok and decoded.invalid_bytes == 0 and decoded.cut_tokens == 2
