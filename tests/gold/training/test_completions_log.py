"""See what the student writes (issue 13, item 5): completions with each model's top token per group, in the console
and in TensorBoard when the run reports there; `gold train` shows the first completion's alignment."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from gold import GoldTrainer
from gold.cli import main
from gold.config import RolloutConfig
from tests.gold.cli.test_commands import _recipe
from tests.gold.conftest import ROWS, tiny, training_args


class FakeWriter:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str, int]] = []

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((tag, text, step))


class FakeTensorBoard(TrainerCallback):
    """Where transformers' TensorBoardCallback keeps its writer."""

    def __init__(self) -> None:
        self.tb_writer = FakeWriter()


def test_completions_are_logged_every_n_steps_with_top_tokens(tmp_path, student_tokenizer, teacher_tokenizer,
                                                             capsys) -> None:  # fmt: skip
    board = FakeTensorBoard()
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1),
                          args=training_args(tmp_path, max_steps=3, per_device_train_batch_size=2),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          rollout=RolloutConfig(lmbda=0.0, log_completions_steps=2, num_completions_to_print=2),
                          callbacks=[board])  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("── completions at step") == 2  # steps 1 and 3
    assert "completions at step 1" in out and "completions at step 3" in out
    first = out.split("completions at step 1")[1].splitlines()
    assert first[1].startswith("[dataset] ") and "→" in first[1]
    assert "[" in first[2] and "|" in first[2]  # group cells: text[student top|teacher top]
    assert [(tag, step) for tag, _, step in board.tb_writer.texts] == [("completions", 1), ("completions", 3)]
    assert "completions at step 3" in board.tb_writer.texts[1][1]


def test_gold_train_shows_the_first_alignment(tmp_path, capsys) -> None:
    assert main(["train", str(_recipe(tmp_path)), "training.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "the first completion, as each side tokenizes it" in out and "groups" in out


def test_the_top_token_is_read_where_the_group_is_predicted(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    """Column c − 1 of the loss view predicts the token at column c: a token planted there is the one shown."""
    from gold.training.completions_log import completion_views

    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    batch = trainer.build_batch(list(trainer.train_dataset)[:1], "dataset")
    aligned = batch.aligned
    student_logits = torch.zeros(*aligned.student_ids.shape, len(student_tokenizer))
    teacher_logits = torch.zeros(*aligned.teacher_ids.shape, len(teacher_tokenizer))
    s_col = int((aligned.student_groups[0] == 0).nonzero()[0, 0])
    t_col = int((aligned.teacher_groups[0] == 0).nonzero()[0, 0])
    s_id, t_id = student_tokenizer.convert_tokens_to_ids("Ġzebra"), teacher_tokenizer.convert_tokens_to_ids("▁zebra")
    student_logits[0, s_col - 1, s_id] = 50.0
    teacher_logits[0, t_col - 1, t_id] = 50.0
    (view,) = completion_views(batch, student_logits, teacher_logits, student_tokenizer=student_tokenizer,
                               teacher_tokenizer=teacher_tokenizer, rows=1)  # fmt: skip
    assert view.groups[0].student_top == student_tokenizer.decode([s_id])
    assert view.groups[0].teacher_top == teacher_tokenizer.decode([t_id])
