"""The output layer applied to hidden states equals the model's own logits for every architecture gold reproduces
(float32 exactly, bfloat16 to its rounding), with soft-capping and logit scales that matter; others are refused."""

from __future__ import annotations

import pytest
import torch
import transformers

from gold.losses.head import VERIFIED_TYPES, output_head

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2)  # fmt: skip
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16}),  # soft-capping 30 by default
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "final_logit_softcapping": 30.0}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.5}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 8.0}),
}


def tiny(kind: str, dtype: torch.dtype = torch.float32):
    config_name, model_name, extra = ARCHITECTURES[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**SMALL, **extra, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(300.0)  # logits of tens: soft-capping at 30 bends them
    return model.to(dtype)


def test_every_verified_type_is_tested() -> None:
    assert set(ARCHITECTURES) == set(VERIFIED_TYPES)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_of_hidden_states_equals_the_models_logits(kind: str, dtype: torch.dtype) -> None:
    model = tiny(kind, dtype)
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids).logits.float()
        hidden = model.model(ids).last_hidden_state
    head, why = output_head(model)
    assert head is not None, why
    logits = head.logits(hidden)
    assert logits.dtype == torch.float32 and float(reference.abs().max()) > 5
    if dtype == torch.float32:
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    else:  # the model post-processes in bf16 (2^-8 relative); the head in float32 from the same bf16 product
        torch.testing.assert_close(logits, reference, rtol=2**-7, atol=2**-7 * float(reference.abs().max()))


def test_other_architectures_and_unknown_post_processing_are_refused() -> None:
    config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2)
    head, why = output_head(transformers.GPT2LMHeadModel(config))
    assert head is None and "'gpt2' is not among" in why
    model = tiny("llama")
    model.config.logit_scale = 2.0  # a field llama does not have: gold cannot know what it means there
    head, why = output_head(model)
    assert head is None and "llama sets logit_scale=2.0" in why


@pytest.mark.slow
@pytest.mark.parametrize(("vocab", "hidden", "heads"), [(151_936, 896, 14), (128_256, 2048, 32)],
                         ids=["qwen2.5-0.5b-shaped", "llama-3.2-1b-shaped"])  # fmt: skip
def test_the_head_at_the_design_shapes(vocab: int, hidden: int, heads: int) -> None:
    """DESIGN §7's student and teacher widths and vocabularies (one decoder layer: the head only sees its output),
    tied embeddings as in those models, float32 and bf16."""
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=heads, num_key_value_heads=2,
                                      tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(3))
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        with torch.no_grad():
            reference = model(ids).logits.float()
            head, why = output_head(model)
            assert head is not None, why
            logits = head.logits(model.model(ids).last_hidden_state)
        tolerance = 1e-5 if dtype == torch.float32 else 2**-7 * float(reference.abs().max())
        torch.testing.assert_close(logits, reference, rtol=1e-5 if dtype == torch.float32 else 2**-7, atol=tolerance)
