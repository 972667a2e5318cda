"""Completions sampled from a model (the student on-policy, the teacher for ``seq_kd``, evaluation samples).

:class:`Generator` is the seam: anything with ``rollout(prompts, seeds=) -> [Rollout]`` plugs in.
:class:`HFGenerator` uses ``transformers`` ``generate``; :class:`gold.rollout.vllm.VLLMGenerator` a vLLM engine,
colocated or served (imported on use: vLLM is an optional extra). Both rules of DESIGN §3 hold for every sampler:

* it stops at **every** stop id (:class:`gold.models.stops.StopRule`: the generation config's list, the
  tokenizer's EOS, the chat template's end token) and returns the ids up to and including the first;
* it never samples an id that is not text or a stop id (:func:`spellable_ids`): embedding rows without a token
  (padding rows of a rounded-up vocabulary, holes in the id space) and non-stop special tokens
  (``<|endoftext|>`` in a Qwen rollout, chat markers). Such a token spells no bytes, so the other model would
  never see it while the sampler's own context held it.
"""

from gold.rollout.base import Generator, Rollout, logprob_gap, rollout_seed, spellable_ids
from gold.rollout.hf import HFGenerator, MaskUnspellable
from gold.rollout.sampling import SampledText, sample_completions, sample_texts, seeded_samples, stop_rate


def __getattr__(name: str) -> object:
    """``VLLMGenerator`` on first use (vLLM is an optional extra; importing it is never needed to use HF)."""
    if name == "VLLMGenerator":
        from gold.rollout.vllm import VLLMGenerator

        return VLLMGenerator
    raise AttributeError(f"module 'gold.rollout' has no attribute {name!r}")


__all__ = [
    "Generator",
    "HFGenerator",
    "MaskUnspellable",
    "Rollout",
    "SampledText",
    "VLLMGenerator",
    "logprob_gap",
    "rollout_seed",
    "sample_completions",
    "sample_texts",
    "seeded_samples",
    "spellable_ids",
    "stop_rate",
]
