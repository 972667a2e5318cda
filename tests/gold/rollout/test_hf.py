"""Rollouts never sample an id without a token or a non-stop special; they stop at every stop id."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment import token_bytes_table
from gold.config import RolloutConfig
from gold.models.stops import model_stop_rule
from gold.rollout import HFGenerator, MaskUnspellable, SampledText, sample_completions, spellable_ids
from tests.gold.conftest import tiny


def test_mask_blocks_rows_beyond_and_holes() -> None:
    allowed = torch.tensor([True, False, True])
    scores = torch.zeros(2, 5)
    out = MaskUnspellable(allowed)(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.isinf(out[:, [1, 3, 4]]).all() and (out[:, [0, 2]] == 0).all()


def test_generation_never_samples_padding_rows(student_tokenizer) -> None:
    model = tiny(student_tokenizer)
    vocab = len(student_tokenizer)
    model.resize_token_embeddings(vocab + 64)  # rows without a token, as in rounded-up vocabularies
    with torch.no_grad():  # make those rows the most likely by far
        model.get_output_embeddings().weight[vocab:] = 50 * model.model.layers[0].input_layernorm.weight.sign()
    assert not spellable_ids(student_tokenizer, vocab + 64)[vocab:].any()
    config = RolloutConfig(temperature=1.0, max_completion_length=8, num_generations=3)
    prompts = [[student_tokenizer.bos_token_id or 0, 42, 43], [44]]
    completions = HFGenerator(model, student_tokenizer, config).generate(prompts)
    assert len(completions) == 6
    assert all(0 <= i < vocab for row in completions for i in row)
    assert all(student_tokenizer.eos_token_id not in row[:-1] for row in completions)  # kept only as the last id


def _favour(model, ids, weight: float = 50.0) -> None:
    """Make ``ids`` the most likely next tokens by far (tied embeddings: raise their output rows)."""
    with torch.no_grad():
        model.get_output_embeddings().weight[ids] = weight * model.model.layers[0].input_layernorm.weight.sign()


def test_non_stop_specials_are_never_sampled(student_tokenizer) -> None:
    """A sampled <|endoftext|> or chat marker spells no bytes: the teacher would never see it."""
    model = tiny(student_tokenizer)
    table = token_bytes_table(student_tokenizer)
    specials = [i for i in np.flatnonzero(table.special_mask) if i != student_tokenizer.eos_token_id]
    _favour(model, specials)
    allowed = spellable_ids(student_tokenizer, len(student_tokenizer), [student_tokenizer.eos_token_id])
    assert not allowed[specials].any() and allowed[student_tokenizer.eos_token_id]
    config = RolloutConfig(temperature=1.0, max_completion_length=6, num_generations=4)
    rows = HFGenerator(model, student_tokenizer, config).generate([[42, 43]])
    assert not any(i in set(specials) for row in rows for i in row)


def test_generation_stops_at_every_stop_id_of_the_generation_config(student_tokenizer) -> None:
    """Llama-3.x / Qwen2.5-Instruct list several stop ids; one id used to override the list, and the text
    after the real stop was trained on."""
    model = tiny(student_tokenizer)
    other_stop = 0  # <|endoftext|>: a special token, a stop id only through the generation config
    model.generation_config.eos_token_id = [other_stop, student_tokenizer.eos_token_id]
    rule = model_stop_rule(model, student_tokenizer)
    assert (
        rule.stop_ids == {other_stop, student_tokenizer.eos_token_id} and rule.end_id == student_tokenizer.eos_token_id
    )
    _favour(model, [other_stop])
    rows = HFGenerator(model, student_tokenizer, RolloutConfig(temperature=0.0, max_completion_length=6)).generate(
        [[42, 43]]
    )
    assert rows == [[other_stop]]  # stopped at once, at the stop id the tokenizer alone does not know
    assert rule.split([5, 6, other_stop, 7]) == ([5, 6], other_stop)
    (sample,) = sample_completions(model, student_tokenizer, [":;"], RolloutConfig(temperature=0.0))  # ids 42, 43
    assert sample == SampledText("", ended=True, stop_id=other_stop)  # the stop id it ended with is kept


def test_greedy_is_deterministic(student_tokenizer) -> None:
    model = tiny(student_tokenizer).train()
    generator = HFGenerator(model, student_tokenizer, RolloutConfig(temperature=0.0, max_completion_length=5))
    assert generator.generate([[1, 2, 3]]) == generator.generate([[1, 2, 3]])
    assert model.training  # generation restores the mode it found


def test_vllm_without_vllm_installed_says_what_to_install(monkeypatch, tmp_path, student_tokenizer,
                                                         teacher_tokenizer) -> None:  # fmt: skip
    import sys

    import pytest

    from gold.training.trainer import GoldTrainer
    from tests.gold.conftest import ROWS, training_args

    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is not installed
    with pytest.raises(ImportError, match=r"pip install 'gold-distill\[vllm\]' on a CUDA machine; on a CPU one "
                                          r"`make install-vllm`"):  # fmt: skip
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=training_args(tmp_path),
                    train_dataset=ROWS, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                    rollout=RolloutConfig(use_vllm=True))  # fmt: skip


def test_the_engine_field_is_a_deprecated_alias_of_use_vllm() -> None:
    import pytest

    with pytest.warns(DeprecationWarning, match="write use_vllm: true"):
        assert RolloutConfig(engine="vllm").use_vllm
    with pytest.warns(DeprecationWarning, match="write use_vllm: false"):
        assert not RolloutConfig(engine="hf").use_vllm
    with pytest.raises(ValueError, match=r"RolloutConfig\.vllm_enable_sleep_mode must stay false in server mode"):
        RolloutConfig(use_vllm=True, vllm_mode="server", vllm_enable_sleep_mode=True)
    assert RolloutConfig(vllm_server_host="10.0.0.2", vllm_server_port=8123).vllm_server_url == "http://10.0.0.2:8123"


def test_rollout_seeds_are_stable_and_spread() -> None:
    from gold.rollout import rollout_seed

    assert rollout_seed(0, 5, 1, 0, 3) == rollout_seed(0, 5, 1, 0, 3)
    seeds = {rollout_seed(0, step, s, 0, row) for step in range(4) for s in range(4) for row in range(8)}
    assert len(seeds) == 128 and all(0 <= x < 2**31 for x in seeds)
    assert all(abs(a - b) > 16 for a in seeds for b in seeds if a != b)  # vLLM seeds sample k of a request seed + k


def test_a_generation_batch_size_that_is_not_the_steps_prompts_is_refused(tmp_path, student_tokenizer,
                                                                          teacher_tokenizer) -> None:  # fmt: skip
    import pytest

    from gold.rollout.vllm import check_vllm
    from gold.training.trainer import GoldTrainer
    from tests.gold.conftest import ROWS, training_args

    args = training_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match=r"generation_batch_size=4: .* = 6 prompts per process .* set it to 6"):
        GoldTrainer(tiny(student_tokenizer), tiny(teacher_tokenizer), args=args, train_dataset=ROWS,
                    student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                    rollout=RolloutConfig(generation_batch_size=4))  # fmt: skip
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3"):
        check_vllm(RolloutConfig(use_vllm=True), device=torch.device("cpu"), deepspeed_stage=3)
    with pytest.raises(ValueError, match="engine must not contradict use_vllm: true"):
        RolloutConfig(engine="hf", use_vllm=True)


# A hub model's generation_config.json may set any of these; each changes what generate samples. gold's rollouts
# must sample the model's own softmax (on-policy GKD, OPD-RL's estimator, HF and vLLM agreeing), so none may leak in.
HOSTILE_FIELDS = {
    "do_sample": True,
    "repetition_penalty": 1.3,
    "no_repeat_ngram_size": 1,
    "min_p": 0.5,
    "typical_p": 0.5,
    "epsilon_cutoff": 0.25,
    "eta_cutoff": 0.5,
    "suppress_tokens": [42],
    "begin_suppress_tokens": [42],
    "bad_words_ids": [[42]],
    "sequence_bias": [[[42], -10.0]],
    "min_new_tokens": 2,
    "min_length": 50,
    "forced_eos_token_id": 43,
    "exponential_decay_length_penalty": (0, 5.0),
    "num_beams": 2,
    "num_return_sequences": 2,
    "top_k": 1,
    "top_p": 0.1,
    "temperature": 0.1,
}
A, B = 42, 43  # ":" and ";"; the prompt holds A, so repetition and n-gram rules would touch it


def peaked(tokenizer, model=None, scales=(1.0, 0.96875, 0.95)):
    """A tiny model (``model``, default :func:`tiny`'s) whose next token after ``[A, 44, A]`` is A, B or the end
    token with p ≈ (0.48, 0.29, 0.22) at the default ``scales`` (tied embeddings: each output row is a multiple of the
    final norm's sign vector, logit ≈ 16·multiple)."""
    model = model if model is not None else tiny(tokenizer)
    with torch.no_grad():
        sign = model.model.layers[0].input_layernorm.weight.sign()
        for token, scale in zip((A, B, tokenizer.eos_token_id), scales, strict=True):
            model.get_output_embeddings().weight[token] = scale * sign
    return model


def test_the_models_own_softmax_is_what_is_sampled_whatever_its_generation_config(student_tokenizer) -> None:
    """The frequencies of 1,200 one-token samples equal the model's softmax (spellable ids only) within 4.5 σ, with a
    generation config that sets every field of HOSTILE_FIELDS (repetition_penalty 1.3 alone moved p(A) from 0.48 to
    0.02; min_p 0.5 removed the end token)."""
    model, prompt, n = peaked(student_tokenizer), [A, 44, A], 1200
    end = student_tokenizer.eos_token_id
    generator = HFGenerator(model, student_tokenizer, RolloutConfig(temperature=1.0, max_completion_length=1))
    with torch.no_grad():
        ids = torch.tensor([prompt])
        probs = generator.processors(ids, model(ids).logits[:, -1].float()).softmax(-1)[0]
    model.generation_config.update(**HOSTILE_FIELDS)
    config = RolloutConfig(temperature=1.0, max_completion_length=1, num_generations=n)
    torch.manual_seed(0)
    rows = HFGenerator(model, student_tokenizer, config).generate([prompt])
    assert len(rows) == n and all(len(row) == 1 for row in rows)
    sampled = torch.tensor([row[0] for row in rows])
    for token in (A, B, end):
        p, freq = float(probs[token]), float((sampled == token).double().mean())
        assert abs(freq - p) < 4.5 * (p * (1 - p) / n) ** 0.5, (token, freq, p)


def _seeded(make, prompts):
    torch.manual_seed(0)
    return make().generate(prompts)


PROMPTS = [[A, 44, A], [B, A]]


@pytest.mark.parametrize("field", sorted(HOSTILE_FIELDS))
def test_no_generation_config_field_changes_what_is_sampled(student_tokenizer, field) -> None:
    """Seed for seed, the same ids with the field set in the model's generation config as without it."""
    model = peaked(student_tokenizer)
    config = RolloutConfig(temperature=1.0, max_completion_length=3, num_generations=8)
    own = _seeded(lambda: HFGenerator(model, student_tokenizer, config), PROMPTS)
    model.generation_config.update(**{"do_sample": True, field: HOSTILE_FIELDS[field]})  # num_return_sequences needs it
    assert _seeded(lambda: HFGenerator(model, student_tokenizer, config), PROMPTS) == own


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_every_hf_sampler_ignores_the_generation_config(student_tokenizer, temperature) -> None:
    """Student rollouts (HFGenerator), sample_completions (seq_kd, gold eval) and the teacher's seq_kd sampler draw
    the same, seed for seed, whatever the generation config sets; greedy stays [A, A, A] (no_repeat_ngram_size 1 made
    it [B, end])."""
    from gold.teacher import LocalTeacher

    model = peaked(student_tokenizer)
    config = RolloutConfig(temperature=temperature, max_completion_length=3, num_generations=4)
    teacher = LocalTeacher(model, student_tokenizer)

    def draws():
        rows = _seeded(lambda: HFGenerator(model, student_tokenizer, config), PROMPTS)
        torch.manual_seed(0)
        texts = sample_completions(model, student_tokenizer, [":,:", ";:"], config)
        return rows, texts, _seeded(lambda: teacher.generator(config), PROMPTS)

    own = draws()
    if temperature == 0:
        assert own[0][0] == [A, A, A]
    model.generation_config.update(**HOSTILE_FIELDS)
    assert draws() == own
