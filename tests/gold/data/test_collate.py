"""The aligned training batch: loss-view columns, groups on both sides, errors."""

from __future__ import annotations

import pytest
import torch

import gold.data.collate
from alignment import align_text_batch, encode_continuation, token_bytes_table
from gold.data.collate import Collator, Completion
from gold.data.examples import CompletionBytesError, DataError, prompt_ids
from gold.losses import PairTables
from gold.losses.byte_marginal import END_BIN
from tests.conftest import zoo


@pytest.fixture(scope="module")
def collator(student_tokenizer, teacher_tokenizer) -> Collator:
    tables = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=len(student_tokenizer),
                              teacher_rows=len(teacher_tokenizer))  # fmt: skip
    return Collator(student_tokenizer, teacher_tokenizer, tables, max_completion_length=24, max_prompt_length=20)


def _prompts(tokenizer, texts):
    return [prompt_ids(tokenizer, t) for t in texts]


def test_loss_view_holds_completion_and_groups(collator, student_tokenizer, teacher_tokenizer) -> None:
    prompts = ["Q1?\n", "A longer question?\n"]
    completions = [collator.from_text(t, index=i) for i, t in enumerate(["It says moo.", "Café ☕ 東京 1234"])]
    batch = collator(_prompts(student_tokenizer, prompts), _prompts(teacher_tokenizer, prompts), completions,
                     source="dataset")  # fmt: skip
    aligned = batch.aligned
    for side, ids, groups in ((batch.student, aligned.student_ids, aligned.student_groups),
                              (batch.teacher, aligned.teacher_ids, aligned.teacher_groups)):  # fmt: skip
        assert ids.shape[1] == side.logits_to_keep
        assert torch.equal(ids, side.input_ids[:, side.prompt_width - 1 :])
        assert (groups[:, 0] == -1).all()  # the last prompt token only predicts
        real = side.attention_mask[:, side.prompt_width :].bool()
        assert ((groups[:, 1:] >= 0) <= real).all()  # groups only on real completion tokens
    for b in range(2):  # both sides carry the same groups, in order
        s_groups = aligned.student_groups[b][aligned.student_groups[b] >= 0].unique_consecutive()
        t_groups = aligned.teacher_groups[b][aligned.teacher_groups[b] >= 0].unique_consecutive()
        assert s_groups.tolist() == t_groups.tolist() == list(range(len(s_groups)))
    assert batch.completions == ("It says moo.", "Café ☕ 東京 1234")
    assert aligned.stats.approximate_groups == 0
    # each completion ended: its last scored column is the end token, a group of its own on both sides
    for b in range(2):
        s_last = int(aligned.student_groups[b].amax())
        s_end = aligned.student_ids[b][aligned.student_groups[b] == s_last]
        t_end = aligned.teacher_ids[b][aligned.teacher_groups[b] == s_last]
        assert s_end.tolist() == [student_tokenizer.eos_token_id] and t_end.tolist() == [teacher_tokenizer.eos_token_id]
    assert batch.counts["align/end_groups"] == 2 and batch.counts["completions/ended"] == 2
    assert aligned.num_groups == aligned.stats.num_groups + 2


def test_completions_are_cut_at_a_shared_boundary_of_the_whole_text(collator, student_tokenizer,
                                                                    teacher_tokenizer) -> None:  # fmt: skip
    """Cutting the student's ids and re-tokenizing the teacher's text re-splits the teacher's last group
    ('4' where the whole text has '430'); a cut dataset row keeps both sides' tokens of the whole text."""
    long = "Sum: " + " ".join(str(n) for n in range(4300, 4340))
    completion = collator.from_text(long, index=0)
    assert not completion.ended and completion.exact_tail and len(completion.student_ids) <= 24
    whole_teacher = encode_continuation(teacher_tokenizer, long)
    assert list(completion.teacher_ids) == whole_teacher[: len(completion.teacher_ids)]
    whole_student = encode_continuation(student_tokenizer, long)
    assert list(completion.student_ids) == whole_student[: len(completion.student_ids)]
    batch = collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]), [completion],
                     source="dataset")  # fmt: skip
    assert long.startswith(batch.completions[0]) and len(batch.completions[0]) < len(long)
    assert batch.counts["align/end_groups"] == 0 and batch.counts["align/dropped_tail_groups"] == 0


def test_a_rollout_cut_by_the_limit_drops_its_last_group(collator, student_tokenizer, teacher_tokenizer) -> None:
    ids = encode_continuation(student_tokenizer, "It is 1234")
    stopped = collator.from_rollout([*ids, student_tokenizer.eos_token_id, 42, 43])
    cut = collator.from_rollout(ids)
    assert stopped == Completion(tuple(ids), ended=True, student_end_id=student_tokenizer.eos_token_id)
    assert not cut.ended
    batch = collator(_prompts(student_tokenizer, ["Q\n"] * 2), _prompts(teacher_tokenizer, ["Q\n"] * 2),
                     [stopped, cut], source="student")  # fmt: skip
    groups = batch.aligned.student_groups
    assert int(groups[0].amax()) == int(groups[1].amax()) + 2  # stopped: + the end group; cut: − its tail
    assert batch.counts["align/dropped_tail_groups"] == 1 and batch.counts["completions/ended"] == 1
    # the dropped group's tokens stay in the input (context) but are not scored
    assert int(batch.student.attention_mask[1, batch.student.prompt_width :].sum()) == len(ids)


def test_a_stop_after_an_unfinished_character_is_no_end(collator, student_tokenizer, teacher_tokenizer) -> None:
    emoji = encode_continuation(student_tokenizer, "ok 👍")
    completion = collator.from_rollout([*emoji[:-1], student_tokenizer.eos_token_id])
    batch = collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]), [completion],
                     source="student")  # fmt: skip
    assert batch.counts["completions/ended"] == 0 and batch.counts["completions/cut_partial_tokens"] >= 1


def test_an_empty_completion_that_stopped_is_one_end_group(collator, student_tokenizer, teacher_tokenizer) -> None:
    batch = collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]),
                     [collator.from_rollout([student_tokenizer.eos_token_id])], source="student")  # fmt: skip
    assert batch.aligned.num_groups == 1 and batch.completions == ("",)


def test_interior_invalid_bytes_align_approximately_and_are_counted(collator, student_tokenizer,
                                                                   teacher_tokenizer) -> None:  # fmt: skip
    table = token_bytes_table(student_tokenizer)
    lone = next(i for i in range(table.vocab_size) if table.token_bytes(i) == b"\xe4")
    ids = [*encode_continuation(student_tokenizer, "It"), lone, *encode_continuation(student_tokenizer, " says moo")]
    batch = collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]),
                     [collator.from_rollout(ids)], source="student")  # fmt: skip
    assert batch.completions == ("It\ufffd says moo",) and batch.counts["align/invalid_bytes"] == 1
    assert batch.aligned.stats.approximate_groups >= 1
    assert int(batch.student.attention_mask[0, batch.student.prompt_width :].sum()) == len(ids)  # nothing dropped


def test_end_group_off(student_tokenizer, teacher_tokenizer) -> None:
    tables = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=len(student_tokenizer),
                              teacher_rows=len(teacher_tokenizer))  # fmt: skip
    off = Collator(student_tokenizer, teacher_tokenizer, tables, max_completion_length=24, end_group=False)
    batch = off(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]),
                [off.from_text("It says moo.", index=0)], source="dataset")  # fmt: skip
    assert batch.aligned.num_groups == batch.aligned.stats.num_groups and batch.counts["align/end_groups"] == 0


def test_the_end_tokens_are_a_matched_pair_and_their_own_byte_bin(student_tokenizer, teacher_tokenizer) -> None:
    """SmolLM2's <|im_end|> and Mistral's </s> differ as strings but mean the same event."""
    tables = PairTables.build(student_tokenizer, teacher_tokenizer, student_rows=len(student_tokenizer),
                              teacher_rows=len(teacher_tokenizer))  # fmt: skip
    student_end, teacher_end = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    assert student_tokenizer.convert_ids_to_tokens(student_end) != teacher_tokenizer.convert_ids_to_tokens(teacher_end)
    pairs = set(zip(tables.student_matched.tolist(), tables.teacher_matched.tolist(), strict=True))
    assert (student_end, teacher_end) in pairs
    assert sum(s == student_end for s, _ in pairs) == 1 and sum(t == teacher_end for _, t in pairs) == 1
    assert int(tables.student_bins[student_end]) == END_BIN == int(tables.teacher_bins[teacher_end])
    assert bool(tables.shared_bins[END_BIN])


def test_a_special_token_inside_a_completion_is_refused_with_its_row(student_tokenizer) -> None:
    """WordPiece spells characters it lacks as [UNK], which covers no bytes: refuse, naming the row."""
    minilm = zoo("minilm")
    tables = PairTables.build(student_tokenizer, minilm, student_rows=len(student_tokenizer),
                              teacher_rows=len(minilm))  # fmt: skip
    collator = Collator(student_tokenizer, minilm, tables, max_completion_length=8)
    with pytest.raises(DataError, match=r"row 7: the teacher tokenizer encodes the completion with special"):
        collator(_prompts(student_tokenizer, ["Q\n"]), [[101]], [collator.from_text("ok 👍🏽", index=7)],
                 source="dataset")  # fmt: skip


def test_prompt_over_the_limit_is_named(collator, student_tokenizer, teacher_tokenizer) -> None:
    prompt = "many words " * 20
    with pytest.raises(
        DataError, match=r"example 0: the student prompt has \d+ tokens, over rollout.max_prompt_length=20"
    ):
        collator(_prompts(student_tokenizer, [prompt]), _prompts(teacher_tokenizer, [prompt]),
                 [collator.from_text("x", index=0)], source="dataset")  # fmt: skip


def test_teacher_that_saw_other_bytes_raises(collator, student_tokenizer, teacher_tokenizer, monkeypatch) -> None:
    real = gold.data.collate.encode_continuation

    def doctored(tokenizer, text):
        return real(tokenizer, text.replace("moo", "baa") if tokenizer is teacher_tokenizer else text)

    monkeypatch.setattr(gold.data.collate, "encode_continuation", doctored)
    with pytest.raises(CompletionBytesError, match="example 0: the teacher's completion tokens spell"):
        collator(_prompts(student_tokenizer, ["Q\n"]), _prompts(teacher_tokenizer, ["Q\n"]),
                 [collator.from_rollout(real(student_tokenizer, "It says moo."))], source="student")  # fmt: skip


def test_a_sampler_past_the_limit_or_with_a_special_token_is_not_trusted(collator, student_tokenizer) -> None:
    """The Generator protocol is a seam (vLLM next): a sample longer than the limit before its stop was cut, so
    it did not end there; a non-stop special inside a sample is refused, naming it."""
    long = encode_continuation(student_tokenizer, " ".join(["word"] * 40))
    over = collator.from_rollout([*long, student_tokenizer.eos_token_id])
    assert not over.ended and len(over.student_ids) == 24 and over.student_end_id is None
    with pytest.raises(ValueError, match=r"special token id\(s\) \[1\]"):
        collator.from_rollout([*long[:3], 1, *long[:3]])  # <|im_start|>


def test_a_teacher_sample_keeps_its_tokens_its_stop_and_counts_its_broken_bytes(tmp_path, student_tokenizer,
                                                                               teacher_tokenizer) -> None:  # fmt: skip
    from gold.config import RolloutConfig
    from gold.training.trainer import GoldTrainer
    from tests.gold.conftest import ROWS, tiny, training_args

    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          rollout=RolloutConfig(lmbda=0.0, seq_kd=True, max_completion_length=24))  # fmt: skip
    own = encode_continuation(teacher_tokenizer, "It says moo")
    stopped = trainer._teacher_sample([*own, teacher_tokenizer.eos_token_id, 5, 6], 0)
    assert (
        stopped.ended and stopped.teacher_ids == tuple(own) and stopped.teacher_end_id == teacher_tokenizer.eos_token_id
    )
    assert not trainer._teacher_sample(own, 1).ended  # cut by the limit: no end group
    lone = teacher_tokenizer.convert_tokens_to_ids("<0xE4>")  # byte fallback: one invalid byte inside
    broken = trainer._teacher_sample([*own[:2], lone, *own[2:]], 2)
    assert broken.source_invalid_bytes == 1 and broken.teacher_ids is not None
    batch = trainer.collator([[1]], [[1]], [broken], source="teacher")
    assert batch.counts["align/invalid_bytes"] == 1 and "\ufffd" in batch.completions[0]


def test_one_vocabulary_reads_the_students_ids_with_one_to_one_groups(student_tokenizer) -> None:
    """A self teacher (or one of the same family) reads the student's sampled ids as they are, even where they
    are not the canonical tokenization, and every token is a group; the groups equal the general aligner's."""
    other = zoo("qwen2.5")
    tables = PairTables.build(student_tokenizer, student_tokenizer, student_rows=len(student_tokenizer),
                              teacher_rows=len(student_tokenizer))  # fmt: skip
    collator = Collator(student_tokenizer, student_tokenizer, tables, max_completion_length=40)
    assert collator.one_vocabulary
    assert not Collator(student_tokenizer, other, tables, max_completion_length=40).one_vocabulary
    # a sampled, non-canonical tokenization: each character encoded alone
    sampled = [i for ch in "Café ☕ 1234" for i in encode_continuation(student_tokenizer, ch)]
    assert sampled != encode_continuation(student_tokenizer, "Café ☕ 1234")
    stop = student_tokenizer.eos_token_id
    completions = [collator.from_rollout([*sampled, stop]), collator.from_text("It says moo.", index=1)]
    prompts = _prompts(student_tokenizer, ["Q1?\n", "Q2?\n"])
    batch = collator(prompts, prompts, completions, source="student")
    aligned = batch.aligned
    assert torch.equal(aligned.student_ids, aligned.teacher_ids)
    assert torch.equal(aligned.student_groups, aligned.teacher_groups)
    first = aligned.student_groups[0][aligned.student_groups[0] >= 0]
    assert first.tolist() == list(range(len(sampled) + 1))  # one group per token, and the end group
    general = align_text_batch(student_tokenizer, student_tokenizer, ["Café ☕ 1234"], student_ids=[sampled],
                               teacher_ids=[sampled])[0]  # fmt: skip
    assert first[:-1].tolist() == general.student_groups.tolist()


def _one_vocabulary_collator(tokenizer, limit: int = 40) -> Collator:
    tables = PairTables.build(tokenizer, tokenizer, student_rows=len(tokenizer), teacher_rows=len(tokenizer))
    return Collator(tokenizer, tokenizer, tables, max_completion_length=limit)


def test_one_vocabulary_teacher_sample_is_read_as_sampled_by_both(student_tokenizer) -> None:
    collator = _one_vocabulary_collator(student_tokenizer)
    text = "Café ☕ 1234"
    sampled = [i for ch in text for i in encode_continuation(student_tokenizer, ch)]  # not the canonical encoding
    stop = student_tokenizer.eos_token_id
    completion = collator.from_text(text, index=0, teacher_ids=sampled, teacher_end_id=stop)
    assert list(completion.student_ids) == list(completion.teacher_ids) == sampled
    prompts = _prompts(student_tokenizer, ["Q?\n"])
    aligned = collator(prompts, prompts, [completion], source="teacher").aligned
    assert torch.equal(aligned.student_ids, aligned.teacher_ids)
    scored = aligned.student_ids[0][aligned.student_groups[0] >= 0]
    assert scored.tolist() == [*sampled, stop]  # the sampled stop ends both sides
    # ids that do not spell the text are not trusted: the text is encoded instead
    other = collator.from_text(text, index=0, teacher_ids=encode_continuation(student_tokenizer, "Moo"))
    assert list(other.student_ids) == list(other.teacher_ids) == encode_continuation(student_tokenizer, text)


def test_one_vocabulary_cut_keeps_the_same_ids_on_both_sides(student_tokenizer) -> None:
    collator = _one_vocabulary_collator(student_tokenizer, limit=5)
    text = "one two three four five six seven eight"
    completion = collator.from_text(text, index=0)
    assert completion.exact_tail and not completion.ended
    assert list(completion.student_ids) == list(completion.teacher_ids)
    assert list(completion.student_ids) == encode_continuation(student_tokenizer, text)[:5]
