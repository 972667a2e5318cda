"""Several teachers of different tokenizer families, one student (issue 31): routing, mixing, exact normalisation
against single-teacher references, gradient accumulation, refusals and per-teacher logs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gold.config import LossConfig, RolloutConfig
from gold.data.examples import DataError
from gold.teacher import LocalTeacher
from gold.training.teachers import UnusedTeacherWarning
from gold.training.trainer import GoldTrainer
from tests.conftest import zoo
from tests.gold.conftest import ROWS, tiny, training_args
from tests.gold.distributed_worker import FixedGenerator, ends_with_a_full_stop

TOKENIZERS = {"mistral": "mistral-v1", "qwen": "qwen2.5"}
TEXT_ROWS = ROWS[:9]  # text prompts: every tokenizer renders them alike (no chat-template warning)
ROUTED = [{**row, "teacher_id": "mistral" if i % 3 == 0 else "qwen"} for i, row in enumerate(TEXT_ROWS)]
CPU = torch.device("cpu")


def _teacher(teacher_id: str) -> tuple[Any, Any]:
    tokenizer = zoo(TOKENIZERS[teacher_id])
    return tiny(tokenizer, seed=1 + list(TOKENIZERS).index(teacher_id)), tokenizer


def _teachers() -> dict[str, Any]:
    return {teacher_id: _teacher(teacher_id) for teacher_id in TOKENIZERS}


def _routed(tmp_path, rows=ROUTED, *, teachers=None, rollout=None, loss=None, extra=None, **args) -> GoldTrainer:
    """Two teachers (Mistral's SentencePiece, Qwen2.5's byte BPE) and a SmolLM2 student, all tiny."""
    return GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=teachers or _teachers(),
                       args=training_args(tmp_path, **args), train_dataset=rows, student_tokenizer=zoo("smollm2"),
                       loss=loss or LossConfig(),
                       rollout=rollout or RolloutConfig(lmbda=0.0, max_completion_length=12),
                       **(extra or {}))  # fmt: skip


def _single(tmp_path, teacher_id: str, rows, *, rollout=None, loss=None, extra=None, **args) -> GoldTrainer:
    """The one-teacher trainer of ``teacher_id`` (the reference)."""
    model, tokenizer = _teacher(teacher_id)
    return GoldTrainer(tiny(zoo("smollm2"), seed=0), model, args=training_args(tmp_path, **args), train_dataset=rows,
                       student_tokenizer=zoo("smollm2"), teacher_tokenizer=tokenizer, loss=loss or LossConfig(),
                       rollout=rollout or RolloutConfig(lmbda=0.0, max_completion_length=12),
                       **(extra or {}))  # fmt: skip


def _opd_setting() -> dict[str, Any]:
    """OPD-RL with a task reward on fixed student rollouts (2 per prompt), beside the hybrid."""
    return {
        "loss": LossConfig(hybrid_weight=0.5, opd_weight=1.0, opd_alpha=1.0),
        "rollout": RolloutConfig(lmbda=1.0, num_generations=2, max_completion_length=40, temperature=1.0),
        "extra": {"student_generator": FixedGenerator(zoo("smollm2")), "reward_funcs": [ends_with_a_full_stop]},
    }


def _loss_and_grads(trainer: GoldTrainer, rows) -> tuple[torch.Tensor, float, dict[str, torch.Tensor]]:
    """One slice of ``rows``: ``(loss, the step's denominator, gradients by name)``."""
    inputs, items = trainer.get_batch_samples(iter([list(rows)]), 1, CPU)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs[0], num_items_in_batch=items)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), float(items), grads


class Recording:
    """A teacher that writes down the prompts of every row it scores or samples from (decoded in its tokenizer)."""

    def __init__(self, teacher: LocalTeacher) -> None:
        self.inner, self.tokenizer, self.seen = teacher, teacher.tokenizer, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _note(self, rows) -> None:
        self.seen.extend(self.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows)

    def logits(self, inputs) -> torch.Tensor:
        rows = zip(inputs.input_ids, inputs.attention_mask, strict=True)
        self._note([ids[mask.bool()].tolist() for ids, mask in rows])
        return self.inner.logits(inputs)

    def generator(self, config) -> Any:
        inner, note = self.inner.generator(config), self._note

        class Sampler:
            def rollout(self, prompts, **kwargs):
                note(prompts)
                return inner.rollout(prompts, **kwargs)

        return Sampler()


def _assert_each_saw_only_its_rows(teachers: dict[str, Recording]) -> None:
    prompts = {t: [r["prompt"].strip() for r in ROUTED if r["teacher_id"] == t] for t in TOKENIZERS}
    for teacher_id, teacher in teachers.items():
        assert teacher.seen, teacher_id
        others = [p for other, ps in prompts.items() if other != teacher_id for p in ps]
        for text in teacher.seen:
            assert any(p in text for p in prompts[teacher_id]), (teacher_id, text)
            assert not any(p in text for p in others), (teacher_id, text)


def test_each_row_is_scored_and_sampled_only_by_its_own_teacher(tmp_path) -> None:
    """Dataset rows, student rollouts and teacher samples (seq_kd) of every slice reach their row's teacher only."""
    teachers = {teacher_id: Recording(LocalTeacher(*_teacher(teacher_id))) for teacher_id in TOKENIZERS}
    rollout = RolloutConfig(lmbda=0.5, seq_kd=True, max_completion_length=6, temperature=1.0)
    trainer = _routed(tmp_path, teachers=teachers, rollout=rollout, max_steps=4, per_device_train_batch_size=3)
    trainer.train()
    _assert_each_saw_only_its_rows(teachers)
    sources = {e.get("rollout/on_policy_fraction") for e in trainer.state.log_history} - {None}
    assert sources == {0.0, 1.0}  # both teacher samples and student rollouts were routed


@pytest.mark.parametrize("setting", ["hybrid", "opd"])
def test_routed_loss_is_the_group_weighted_mean_of_each_teachers_own_loss(tmp_path, setting) -> None:
    """A slice of both teachers' rows: loss and gradients equal (G_m · L_m + G_q · L_q) / (G_m + G_q), each L_t the
    one-teacher trainer's mean over its own rows' G_t groups; with OPD-RL on rollouts each row's reward is its own
    teacher's log-ratio."""
    rows = ROUTED[:5]
    options = _opd_setting() if setting == "opd" else {}
    routed = _routed(tmp_path / "routed", rows, **options)
    loss, items, grads = _loss_and_grads(routed, routed.train_dataset)
    parts = {}
    for teacher_id in TOKENIZERS:
        own = [r for r in rows if r["teacher_id"] == teacher_id]
        single = _single(tmp_path / teacher_id, teacher_id, own, **options)
        parts[teacher_id] = _loss_and_grads(single, single.train_dataset)
    total = sum(groups for _, groups, _ in parts.values())
    assert items == total and all(groups > 0 for _, groups, _ in parts.values())
    expected = sum(part_loss * groups for part_loss, groups, _ in parts.values()) / total
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    for name, grad in grads.items():
        reference = sum(part_grads[name] * groups for _, groups, part_grads in parts.values()) / total
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-7, msg=name)


def test_mixing_normalises_by_the_weighted_group_count(tmp_path) -> None:
    """Every row scored by both teachers: loss = (w_m S_m + w_q S_q) / (w_m G_m + w_q G_q), S_t = G_t · L_t."""
    weights = {"mistral": 0.25, "qwen": 0.75}
    rows = TEXT_ROWS[:4]  # no teacher_id: mixing scores every row with every teacher
    mixed = GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=_teachers(), teacher_weights=weights,
                        args=training_args(tmp_path), train_dataset=rows, student_tokenizer=zoo("smollm2"),
                        rollout=RolloutConfig(lmbda=0.0, max_completion_length=12))  # fmt: skip
    loss, items, grads = _loss_and_grads(mixed, mixed.train_dataset)
    parts = {}
    for teacher_id in TOKENIZERS:
        single = _single(tmp_path / teacher_id, teacher_id, rows)
        parts[teacher_id] = _loss_and_grads(single, single.train_dataset)
    denominator = sum(weights[t] * groups for t, (_, groups, _) in parts.items())
    assert items == pytest.approx(denominator)
    expected = sum(weights[t] * part_loss * groups for t, (part_loss, groups, _) in parts.items()) / denominator
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    for name, grad in grads.items():
        reference = sum(weights[t] * g[name] * groups for t, (_, groups, g) in parts.items()) / denominator
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-7, msg=name)


def test_mixing_with_weights_one_and_zero_is_the_first_teacher_alone(tmp_path) -> None:
    """teacher_weights {mistral: 1, qwen: 0} trains exactly as teacher=mistral (qwen is never asked)."""
    sgd = dict(max_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0, per_device_train_batch_size=3)
    teachers = {**_teachers(), "qwen": Recording(LocalTeacher(*_teacher("qwen")))}
    with pytest.warns(UnusedTeacherWarning, match="'qwen'"):  # weight 0: never asked, and said so
        mixed = GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=teachers, teacher_weights={"mistral": 1, "qwen": 0},
                            args=training_args(tmp_path / "mixed", **sgd), train_dataset=TEXT_ROWS,
                            student_tokenizer=zoo("smollm2"),
                            rollout=RolloutConfig(lmbda=0.0, max_completion_length=12))  # fmt: skip
    mixed.train()
    single = _single(tmp_path / "single", "mistral", TEXT_ROWS, **sgd)
    single.train()
    assert not teachers["qwen"].seen
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(mixed.model.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert [e["loss"] for e in mixed.state.log_history[:2]] == pytest.approx(
        [e["loss"] for e in single.state.log_history[:2]], rel=1e-5)  # fmt: skip


@pytest.mark.parametrize("weights", [None, {"mistral": 0.3, "qwen": 0.7}], ids=["routing", "mixing"])
def test_gradient_accumulation_with_two_teachers_matches_one_big_batch(tmp_path, weights) -> None:
    """2 accumulated slices of 2 rows (each slice's rows split unevenly between the teachers) give the update of one
    slice of 4: the denominator is the step's global (weighted) group count, across teachers and slices."""
    rows = [ROUTED[0], ROUTED[1], ROUTED[3], ROUTED[4]]  # mistral, qwen, mistral, qwen
    final = []
    for batch, accumulation in ((4, 1), (2, 2)):
        trainer = GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=_teachers(), teacher_weights=weights,
                              args=training_args(tmp_path / f"{batch}", max_steps=1, per_device_train_batch_size=batch,
                                                 gradient_accumulation_steps=accumulation, optim="sgd",
                                                 learning_rate=1.0, max_grad_norm=0),
                              train_dataset=rows, student_tokenizer=zoo("smollm2"),
                              rollout=RolloutConfig(lmbda=0.0, max_completion_length=12))  # fmt: skip
        trainer.train()
        final.append(trainer.model.get_output_embeddings().weight.detach().clone())
    assert not torch.equal(final[0], tiny(zoo("smollm2"), seed=0).get_output_embeddings().weight)
    torch.testing.assert_close(final[0], final[1], rtol=1e-4, atol=1e-6)


def test_per_teacher_logs_and_group_fractions_that_sum_to_one(tmp_path, capsys) -> None:
    rollout = RolloutConfig(lmbda=0.0, max_completion_length=12, log_completions_steps=1)
    trainer = _routed(tmp_path, max_steps=2, per_device_train_batch_size=4, rollout=rollout)
    trainer.train()
    printed = capsys.readouterr().out
    assert any(f"[dataset, teacher {t}]" in printed for t in TOKENIZERS)  # the completion log names the rows' teacher
    for logged in (e for e in trainer.state.log_history if "loss" in e):
        fractions = [logged[f"teacher/{t}/group_fraction"] for t in TOKENIZERS]
        assert sum(fractions) == pytest.approx(1.0) and all(0 <= f <= 1 for f in fractions)
        assert sum(logged[f"teacher/{t}/row_fraction"] for t in TOKENIZERS) == pytest.approx(1.0)
        for teacher_id in TOKENIZERS:
            if logged[f"teacher/{teacher_id}/group_fraction"] > 0:
                assert logged[f"loss/{teacher_id}/hybrid"] > 0
                assert 0 < logged[f"teacher/{teacher_id}/matched_mass"] <= 1
        # the optimised mean is the group-weighted mean of the teachers' own means
        mixed = sum(logged[f"teacher/{t}/group_fraction"] * logged.get(f"loss/{t}/hybrid", 0.0) for t in TOKENIZERS)
        assert logged["loss/hybrid"] == pytest.approx(mixed, rel=1e-5)
        assert logged["loss"] == pytest.approx(logged["loss/hybrid"], rel=1e-4)


def test_a_teacher_no_row_names_is_named_at_start(tmp_path) -> None:
    rows = [{**row, "teacher_id": "mistral"} for row in TEXT_ROWS[:3]]
    with pytest.warns(UnusedTeacherWarning, match="teacher 'qwen' scores no row"):
        _routed(tmp_path, rows)


@pytest.mark.parametrize(
    ("rows", "weights", "error", "match"),
    [
        ([{**TEXT_ROWS[0], "teacher_id": "qwen"}, TEXT_ROWS[1]], None, DataError, "row 1 names no teacher; each row's"),
        ([{**TEXT_ROWS[0], "teacher_id": "llama"}], None, DataError,
         "row 0 names teacher 'llama'; each row's teacher_id .* must be one of 'mistral', 'qwen'"),
        (TEXT_ROWS[:2], {"mistral": 1, "llama": 1}, ValueError, "teacher_weights names 'llama', which is not a"),
        (TEXT_ROWS[:2], {"mistral": -0.5, "qwen": 1}, ValueError, r"teacher_weights\['mistral'\] must be a finite"),
        (TEXT_ROWS[:2], {"mistral": 0, "qwen": 0}, ValueError, "teacher_weights are all 0"),
    ],
    ids=["no teacher_id", "unknown teacher_id", "unknown weight id", "negative weight", "all zero"],
)  # fmt: skip
def test_refusals_name_the_bad_value(tmp_path, rows, weights, error, match) -> None:
    with pytest.raises(error, match=match):
        GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=_teachers(), teacher_weights=weights,
                    args=training_args(tmp_path), train_dataset=rows, student_tokenizer=zoo("smollm2"))  # fmt: skip


def test_teacher_and_teachers_together_are_refused(tmp_path) -> None:
    model, tokenizer = _teacher("mistral")
    with pytest.raises(ValueError, match="teacher= and teachers= were both given"):
        GoldTrainer(tiny(zoo("smollm2"), seed=0), model, teachers=_teachers(), args=training_args(tmp_path),
                    train_dataset=ROUTED, student_tokenizer=zoo("smollm2"), teacher_tokenizer=tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match=r"loss\.sft_weight with teacher_weights"):
        GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=_teachers(), teacher_weights={"qwen": 1},
                    args=training_args(tmp_path), train_dataset=ROUTED, student_tokenizer=zoo("smollm2"),
                    loss=LossConfig(sft_weight=0.5))  # fmt: skip


def test_the_sft_baseline_trains_on_each_rows_own_teachers_samples(tmp_path) -> None:
    """SequenceKDTrainer with teachers= and seq_kd: SFT on the union of the teachers' samples, each row's sample
    drawn from its own teacher (the demo's SFT arm)."""
    from gold.training.baselines import SequenceKDTrainer

    teachers = {teacher_id: Recording(LocalTeacher(*_teacher(teacher_id))) for teacher_id in TOKENIZERS}
    trainer = SequenceKDTrainer(tiny(zoo("smollm2"), seed=0), teachers=teachers,
                                args=training_args(tmp_path, max_steps=2), train_dataset=ROUTED,
                                student_tokenizer=zoo("smollm2"),
                                rollout=RolloutConfig(lmbda=0.0, seq_kd=True, max_completion_length=6,
                                                      temperature=1.0))  # fmt: skip
    trainer.train()
    _assert_each_saw_only_its_rows(teachers)
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(e["loss/cross_entropy"] == pytest.approx(e["loss"], rel=1e-4) for e in logged)


def test_mixing_runs_the_student_once_for_teachers_that_see_the_same_rows(tmp_path, monkeypatch) -> None:
    """Both teachers score the same completions (none cut): one student forward serves both parts, with the loss and
    gradients of one forward per part."""
    import gold.training.trainer

    rollout = RolloutConfig(lmbda=0.0, max_completion_length=64)
    mixed = GoldTrainer(tiny(zoo("smollm2"), seed=0), teachers=_teachers(), teacher_weights={"mistral": 1, "qwen": 2},
                        args=training_args(tmp_path), train_dataset=TEXT_ROWS[:3], student_tokenizer=zoo("smollm2"),
                        rollout=rollout)  # fmt: skip
    calls = []
    mixed.model.register_forward_hook(lambda module, args, output: calls.append(1))
    shared = _loss_and_grads(mixed, mixed.train_dataset)
    assert len(calls) == 1
    monkeypatch.setattr(gold.training.trainer, "shared_logits", lambda previous, inputs: None)
    separate = _loss_and_grads(mixed, mixed.train_dataset)
    assert len(calls) == 3  # one forward per teacher
    torch.testing.assert_close(shared[0], separate[0])
    for name, grad in shared[2].items():
        torch.testing.assert_close(grad, separate[2][name], rtol=1e-5, atol=1e-8, msg=name)
