"""OPD-RL (issue 17, item 2): the policy gradient on exact group log-likelihoods, with the teacher's group
log-ratio as the reward, equals a hand-written REINFORCE on the same groups; a teacher equal to the student gives
no reward and no gradient."""

from __future__ import annotations

import pytest
import torch

from gold import GoldTrainer
from gold.config import LossConfig, RolloutConfig
from gold.losses.opd import opd_loss
from tests.gold.conftest import ROWS, tiny, training_args


def _aligned(tmp_path, student_tokenizer, teacher_tokenizer):
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1), args=training_args(tmp_path),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer,
                          teacher_tokenizer=teacher_tokenizer)  # fmt: skip
    return trainer.build_batch(list(trainer.train_dataset)[:4], "dataset").aligned


def _group_logprob(logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, b: int, g: int) -> torch.Tensor:
    """log p(group) by the chain rule, token by token (column c is predicted by logits column c − 1)."""
    columns = (groups[b] == g).nonzero().flatten().tolist()
    return sum(torch.log_softmax(logits[b, c - 1].double(), dim=-1)[ids[b, c]] for c in columns)


def _reference(student_logits, teacher_logits, aligned, alpha, base):
    terms, count = [], 0
    for b in range(aligned.student_ids.shape[0]):
        for g in range(int(aligned.student_groups[b].max()) + 1):
            student = _group_logprob(student_logits, aligned.student_ids, aligned.student_groups, b, g)
            teacher = _group_logprob(teacher_logits, aligned.teacher_ids, aligned.teacher_groups, b, g)
            advantage = alpha * (teacher - student).detach() + (base[b] if base is not None else 0.0)
            terms.append(-advantage * student)
            count += 1
    return sum(terms) / count


@pytest.mark.parametrize("alpha, with_base", [(1.0, False), (0.3, True)])
def test_opd_gradient_is_reinforce_on_group_loglikelihoods(tmp_path, student_tokenizer, teacher_tokenizer, alpha,
                                                            with_base) -> None:  # fmt: skip
    aligned = _aligned(tmp_path, student_tokenizer, teacher_tokenizer)
    generator = torch.Generator().manual_seed(0)
    b, ts, tt = aligned.student_ids.shape[0], aligned.student_ids.shape[1], aligned.teacher_ids.shape[1]
    student_logits = torch.randn(b, ts, len(student_tokenizer), generator=generator, requires_grad=True)
    teacher_logits = torch.randn(b, tt, len(teacher_tokenizer), generator=generator)
    base = torch.randn(b, generator=generator, dtype=torch.float64) if with_base else None
    loss, metrics = opd_loss(student_logits, teacher_logits, aligned, alpha=alpha, base_advantages=base)
    (grad,) = torch.autograd.grad(loss, student_logits)
    reference = _reference(student_logits, teacher_logits, aligned, alpha, base)
    (reference_grad,) = torch.autograd.grad(reference, student_logits)
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    torch.testing.assert_close(grad, reference_grad.to(grad.dtype), rtol=1e-4, atol=1e-7)
    assert metrics["opd/log_ratio_mean"] != 0.0


def test_a_teacher_equal_to_the_student_gives_no_reward_and_no_gradient(tmp_path, student_tokenizer) -> None:
    aligned = _aligned(tmp_path, student_tokenizer, student_tokenizer)
    logits = torch.randn(*aligned.student_ids.shape, len(student_tokenizer), requires_grad=True)
    loss, metrics = opd_loss(logits, logits.detach().clone(), aligned)
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(loss.detach()) == 0.0 and metrics["opd/log_ratio_mean"] == 0.0
    assert torch.count_nonzero(grad) == 0


def test_opd_alone_trains_on_rollouts(tmp_path, student_tokenizer, teacher_tokenizer) -> None:
    trainer = GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer, seed=1),
                          args=training_args(tmp_path, max_steps=2, per_device_train_batch_size=2),
                          train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                          loss=LossConfig(hybrid_weight=0.0, opd_weight=1.0),
                          rollout=RolloutConfig(lmbda=1.0, max_completion_length=6, temperature=1.0))  # fmt: skip
    before = trainer.model.get_output_embeddings().weight.detach().clone()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss/opd" in entry]
    assert len(logged) == 2 and all("opd/log_ratio_mean" in entry for entry in logged)
    assert not torch.equal(trainer.model.get_output_embeddings().weight, before)


def test_opd_expected_gradient_is_the_reverse_kl_gradient() -> None:
    """Over the student's own samples the OPD gradient averages to ∇ KL(student ‖ teacher): enumerate every next
    token y of a one-token group, weight its gradient by p_S(y), and compare with autograd of the exact KL."""
    from gold.data.batch import AlignedBatch

    vocab = 7
    generator = torch.Generator().manual_seed(3)
    student_logits = torch.randn(1, 2, vocab, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(1, 2, vocab, generator=generator, dtype=torch.float64)
    groups = torch.tensor([[-1, 0]])
    student_probs = torch.softmax(student_logits[0, 0].detach(), dim=-1)
    expected = torch.zeros_like(student_logits)
    for token in range(vocab):
        ids = torch.tensor([[0, token]])
        batch = AlignedBatch(ids, ids, groups, groups, tables=None, stats=None)  # type: ignore[arg-type]
        loss, _ = opd_loss(student_logits, teacher_logits, batch)
        (grad,) = torch.autograd.grad(loss, student_logits)
        expected += student_probs[token] * grad
    log_s, log_t = torch.log_softmax(student_logits[0, 0], -1), torch.log_softmax(teacher_logits[0, 0], -1)
    (kl_grad,) = torch.autograd.grad((log_s.exp() * (log_s - log_t)).sum(), student_logits)
    torch.testing.assert_close(expected, kl_grad)
