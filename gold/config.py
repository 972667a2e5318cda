"""Configuration: nested frozen dataclasses, validated once, with the bad value in every message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LossConfig:
    """Which loss terms to combine, and how.

    The total is ``Σ weight × term`` with each term averaged over the aligned groups of the global
    batch. Field names follow TRL's GOLDConfig where the meaning is the same (``beta``).
    """

    # GOLD hybrid: generalized JSD on byte-matched vocabulary + ULD on the rest
    hybrid_weight: float = 1.0
    # plain ULD (sorted-probability L1 over the whole vocabulary)
    uld_weight: float = 0.0
    # binarised divergence of the group byte likelihoods (ALM-style, exact, vocabulary-free)
    span_weight: float = 0.0
    # KL of the next-byte distributions at group starts (exact, vocabulary-free)
    byte_marginal_weight: float = 0.0
    # generalized-JSD β for every JSD-based term: 0 forward KL(T‖S), 1 reverse KL(S‖T)
    beta: float = 0.5
    # logits are divided by these before the softmax
    student_temperature: float = 1.0
    teacher_temperature: float = 1.0
    # hybrid weights: "mass" (per row, teacher's matched probability) or "fixed" (the two below)
    hybrid_weighting: Literal["mass", "fixed"] = "mass"
    hybrid_matched_weight: float = 0.5
    hybrid_unmatched_weight: float = 0.5
    # how ULD (and the hybrid's unmatched part) sorts: "auto" = "quantized" on CPU (no sort, error
    # <= 2^-7, gold.losses.uld_quantized) and "exact" on GPUs; "topk" uses uld_top_k (gold.losses.uld)
    uld_method: Literal["auto", "exact", "quantized", "topk"] = "auto"
    uld_top_k: int = 256
    # groups per chunk; each chunk is recomputed in backward, bounding memory to ~chunk × V (None: all
    # at once, faster but holding every (G, V) row of both models)
    chunk_groups: int | None = 256

    def __post_init__(self) -> None:
        weights = ("hybrid_weight", "uld_weight", "span_weight", "byte_marginal_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if sum(getattr(self, name) for name in weights) <= 0:
            raise ValueError(f"LossConfig needs at least one positive term weight among {', '.join(weights)}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"LossConfig.beta must be in [0, 1], got {self.beta}")
        for name in ("student_temperature", "teacher_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LossConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.hybrid_weighting not in ("mass", "fixed"):
            raise ValueError(f"LossConfig.hybrid_weighting must be 'mass' or 'fixed', got {self.hybrid_weighting!r}")
        if self.uld_method not in ("auto", "exact", "quantized", "topk"):
            raise ValueError(f"LossConfig.uld_method must be auto, exact, quantized or topk, got {self.uld_method!r}")
        if self.uld_top_k < 1:
            raise ValueError(f"LossConfig.uld_top_k must be >= 1, got {self.uld_top_k}")
        if self.chunk_groups is not None and self.chunk_groups < 1:
            raise ValueError(f"LossConfig.chunk_groups must be >= 1 or None, got {self.chunk_groups}")
