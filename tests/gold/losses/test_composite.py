"""The composite loss on real tokenizer pairs: identity property, chunking, TRL parity, metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from alignment import align_texts
from gold.config import LossConfig
from gold.losses import AlignedBatch, PairTables, cross_tokenizer_loss, generalized_jsd, group_logprobs, uld
from tests.conftest import zoo

TEXTS = ["The answer is 12345.", "Café au lait, s'il vous plaît 👍🏽", "def f(x):\n    return x"]


def make_batch(student_name: str, teacher_name: str, *, student_rows: int, teacher_rows: int) -> AlignedBatch:
    student, teacher = zoo(student_name), zoo(teacher_name)
    alignments = [align_texts(student, teacher, text) for text in TEXTS]
    tables = PairTables.build(student, teacher, student_rows=student_rows, teacher_rows=teacher_rows,
                              with_prefix_classes=True)  # fmt: skip
    prompt_s = [[student.convert_tokens_to_ids("<|im_start|>")] if student_name == "qwen2.5" else [1]] * len(TEXTS)
    prompt_t = [[teacher.bos_token_id or 1]] * len(TEXTS)
    return AlignedBatch.from_alignments(alignments, tables, student_prefix=prompt_s, teacher_prefix=prompt_t)


def logits_for(ids: torch.Tensor, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*ids.shape, vocab, generator=gen, dtype=torch.float64)


def test_identity_property_same_tokenizer_reduces_to_jsd() -> None:
    qwen_size = len(zoo("qwen2.5"))
    batch = make_batch("qwen2.5", "qwen2.5", student_rows=qwen_size, teacher_rows=qwen_size)
    student_logits = logits_for(batch.student_ids, qwen_size, 1)
    teacher_logits = logits_for(batch.teacher_ids, qwen_size, 2)
    loss, _ = cross_tokenizer_loss(student_logits, teacher_logits, batch, LossConfig(beta=0.4))
    s_rows = group_logprobs(student_logits, batch.student_ids, batch.student_groups)
    t_rows = group_logprobs(teacher_logits, batch.teacher_ids, batch.teacher_groups)
    # one tokenizer: every group is one token, so rows are plain log-softmax rows
    mask = batch.student_groups >= 0
    plain = student_logits[:, :-1][mask[:, 1:]].log_softmax(-1)
    torch.testing.assert_close(s_rows.logprobs, plain)
    expected = generalized_jsd(s_rows.logprobs, t_rows.logprobs, beta=0.4).mean()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_chunked_loss_and_gradients_equal_unchunked() -> None:
    batch = make_batch("qwen2.5", "llama-3", student_rows=151936, teacher_rows=128256)
    student_logits = logits_for(batch.student_ids, 151936, 3).float().requires_grad_()
    teacher_logits = logits_for(batch.teacher_ids, 128256, 4).float()
    terms = {"hybrid_weight": 1.0, "uld_weight": 0.5, "span_weight": 0.3, "byte_marginal_weight": 0.2}
    config = LossConfig(**terms, chunk_groups=None, implementation="torch")
    loss, metrics = cross_tokenizer_loss(student_logits, teacher_logits, batch, config)
    (grad,) = torch.autograd.grad(loss, student_logits)
    chunked = LossConfig(**terms, chunk_groups=7, implementation="torch")
    loss_c, _ = cross_tokenizer_loss(student_logits, teacher_logits, batch, chunked)
    (grad_c,) = torch.autograd.grad(loss_c, student_logits)
    torch.testing.assert_close(loss_c, loss)
    torch.testing.assert_close(grad_c, grad, atol=1e-6, rtol=1e-4)
    assert {"loss/hybrid", "loss/uld", "loss/span", "loss/byte_marginal", "align/one_to_one_fraction",
            "hybrid/teacher_matched_mass", "hybrid/matched_jsd", "hybrid/unmatched_uld"} <= set(metrics)  # fmt: skip
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradient_accumulation_normalisation() -> None:
    batch = make_batch("qwen2.5", "llama-3", student_rows=151936, teacher_rows=128256)
    student_logits = logits_for(batch.student_ids, 151936, 5).float()
    teacher_logits = logits_for(batch.teacher_ids, 128256, 6).float()
    config = LossConfig()
    mean, _ = cross_tokenizer_loss(student_logits, teacher_logits, batch, config)
    halved, _ = cross_tokenizer_loss(student_logits, teacher_logits, batch, config,
                                     num_items_in_batch=2 * batch.num_groups)  # fmt: skip
    torch.testing.assert_close(halved, mean / 2)


def test_uld_with_chain_rule_rows_equals_trl_bayesian_uld() -> None:
    """Same semantics: TRL 1.16 ULDLoss(uld_token_merge_strategy="bayesian", extended ULD) on one example."""
    from trl.experimental.gold.gold_trainer import ULDLoss

    student, teacher = zoo("qwen2.5"), zoo("llama-3")
    text = "The answer is 12345, not 678."
    alignment = align_texts(student, teacher, text)
    tables = PairTables.build(student, teacher, student_rows=151936, teacher_rows=128256)
    batch = AlignedBatch.from_alignments([alignment], tables, student_prefix=[[151644]], teacher_prefix=[[128000]])
    student_logits = logits_for(batch.student_ids, 151936, 7).float()
    teacher_logits = logits_for(batch.teacher_ids, 128256, 8).float()
    rows_s = group_logprobs(student_logits, batch.student_ids, batch.student_groups).logprobs
    rows_t = group_logprobs(teacher_logits, batch.teacher_ids, batch.teacher_groups).logprobs
    gold_value = uld(rows_s, rows_t).mean()

    config = SimpleNamespace(
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
        uld_teacher_temperature=1.0, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
        use_extended_uld=True, uld_token_merge_strategy="bayesian", uld_use_hybrid_loss=False,
    )  # fmt: skip
    trl_loss = ULDLoss(config, student_tokenizer=student, teacher_tokenizer=teacher)

    def offsets(spans: torch.Tensor, width: int) -> torch.Tensor:
        out = torch.zeros(1, width, 2, dtype=torch.long)
        out[0, 1 : 1 + spans.shape[0]] = spans
        return out

    labels_s = torch.where(batch.student_groups >= 0, batch.student_ids, -100)
    labels_t = torch.where(batch.teacher_groups >= 0, batch.teacher_ids, -100)
    trl_value = trl_loss(
        student_logits, teacher_logits, labels_s, labels_t, batch.student_ids, batch.teacher_ids,
        student_byte_offsets=offsets(torch.from_numpy(alignment.student_spans), batch.student_ids.shape[1]),
        teacher_byte_offsets=offsets(torch.from_numpy(alignment.teacher_spans), batch.teacher_ids.shape[1]),
    )  # fmt: skip
    torch.testing.assert_close(gold_value, trl_value, atol=1e-5, rtol=1e-4)


def test_trl_raw_string_matching_misses_cross_family_pairs_that_gold_matches() -> None:
    """Documented difference: TRL's hybrid matches raw piece strings; gold matches canonical bytes."""
    gemma, smollm = zoo("gemma-3"), zoo("smollm2")
    tables = PairTables.build(smollm, gemma, student_rows=len(smollm), teacher_rows=len(gemma))
    raw = set(smollm.get_vocab()) & set(gemma.get_vocab())
    assert tables.student_matched.numel() > 2 * len(raw)


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        LossConfig(span_weight=-1)
    with pytest.raises(ValueError, match="at least one positive"):
        LossConfig(hybrid_weight=0)
