"""Configuration: nested frozen dataclasses, validated once, with the bad value in every message."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from gold.model_config import DTYPES, ModelConfig  # noqa: F401  (part of this module's API)

# beyond these a softmax of logits a few units apart is one-hot or uniform to float32 precision
TEMPERATURES = (0.01, 100.0)
TEMPERATURE_WHY = "beyond it the softmax is one-hot or uniform in float32"
MAX_WEIGHT = 1000.0


class RecipeError(ValueError):
    """A recipe key or value that does not fit :class:`GoldConfig` (raised where a recipe is read or its models are
    built; :mod:`gold.cli.recipe` reads recipes)."""


@dataclass(frozen=True)
class LossConfig:
    """Which loss terms to combine, and how.

    The total is ``Σ weight × term`` with each term averaged over the aligned groups of the global
    batch. Field names follow TRL's GOLDConfig where the meaning is the same (``beta``).

    The defaults were checked with the quality harness (``benchmarks/bench_quality.py``, RESULTS.md: the demo task,
    one teacher sample per prompt, 300 steps, 2 seeds; held-out KL(T‖S) bits per byte, mean ± half range). The
    figures beside each field come from that run.
    """

    # GOLD hybrid: generalized JSD on byte-matched vocabulary + ULD on the rest. 0.525 ± 0.046 (77 % accuracy) vs SFT
    # 1.591 ± 0.014 (45 %) on the same samples
    hybrid_weight: float = 1.0
    # plain ULD (sorted-probability L1 over the whole vocabulary). Alone it does not learn the task: 7.18 ± 0.45,
    # worse than the start (6.00)
    uld_weight: float = 0.0
    # binarised divergence of the group byte likelihoods (ALM-style, exact, vocabulary-free). Added to the hybrid:
    # 0.513 ± 0.001, within the hybrid's spread, and 1.4× the step time; off
    span_weight: float = 0.0
    # KL of the next-byte distributions at group starts (exact, vocabulary-free). Added: 0.475 ± 0.025, which
    # overlaps the hybrid's spread, and 1.9× the step time; off, a candidate to revisit on the real pair
    byte_marginal_weight: float = 0.0
    # both next-token distributions at group starts projected into the teacher's vocabulary through the tokens'
    # bytes (each token counts towards the longest teacher token it starts with; gold.losses.projection), compared
    # there: identity-aware where the hybrid's unmatched part (ULD) is not. At 1: KL(S‖T) on the student's own text
    # 0.445 ± 0.013 vs 0.751 ± 0.035, KL(T‖S) 0.461 ± 0.002; off by default for its cost (a torch-path term, one to
    # two orders of magnitude the fused hybrid's loss time on CPU)
    projection_weight: float = 0.0
    # SFT mixing: the student's cross-entropy on completions it did not write (dataset rows, teacher samples; never
    # its own rollouts), a mean over their tokens in the step, logged as loss/sft (gold.training.sft_mix)
    sft_weight: float = 0.0
    # OPD-RL on student rollouts (gold.losses.opd): policy gradient with the teacher's group log-ratio as the reward;
    # opd_alpha weighs that reward in the advantage
    opd_weight: float = 0.0
    opd_alpha: float = 1.0
    # task rewards for OPD-RL ("package.module:function", TRL GRPO's signature; gold.training.rewards) and their
    # weights:
    # GRPO group-normalised advantages over rollout.num_generations (>= 2) completions per prompt
    reward_funcs: list[str] = field(default_factory=list)
    reward_weights: list[float] | None = None
    # generalized-JSD β for every JSD-based term: 0 forward KL(T‖S), 1 reverse KL(S‖T). 0.5 is TRL's default and
    # goes with rollout.lmbda's 0.5: on-policy, on a pretrained student, it was closest to the teacher on the
    # student's own text (the real pair, RESULTS.md). Off-policy (lmbda 0) β 0 is clearly better: 0.525 vs 0.886
    # (β 0.5) vs 1.114 (β 1), so off-policy recipes and the demo set beta: 0
    beta: float = 0.5
    # logits are divided by these before the softmax. 2 on both sides: 1.005 ± 0.017 (0 % accuracy) vs 0.525 at 1
    student_temperature: float = 1.0
    teacher_temperature: float = 1.0
    # hybrid weights: "mass" (per row, the teacher's matched probability) or "fixed" (the two below). Fixed 0.5/0.5:
    # 0.503 ± 0.028, a tie with mass; "mass" stays, because it needs no weights tuned per pair
    hybrid_weighting: Literal["mass", "fixed"] = "mass"
    hybrid_matched_weight: float = 0.5
    hybrid_unmatched_weight: float = 0.5
    # how ULD (and the hybrid's unmatched part) sorts: "auto" = "quantized" on CPU (no sort, error
    # <= 2^-7, gold.losses.uld_quantized) and "exact" on GPUs; "quantized" on a GPU runs the same algorithm as
    # Triton kernels (gold.losses.triton_uld); "topk" uses uld_top_k (gold.losses.uld)
    uld_method: Literal["auto", "exact", "quantized", "topk"] = "auto"
    uld_top_k: int = 256
    # torch path only (the fused path holds no (G, V) rows): groups per chunk; each chunk is recomputed
    # in backward, bounding memory to ~chunk × V (None: all at once, holding every (G, V) row of both models)
    chunk_groups: int | None = 256
    # groups whose last tokens start at different bytes (Llama-3 `123` against Qwen2.5 `1`·`2`·`3`) pair the columns
    # that spell the same string (teacher `123` with student `3` after `12`; alignment.shifted); false: the global
    # vocabulary map, which there pairs different strings (student `3` after `12`, i.e. `123`, with teacher `3`), as
    # TRL's hybrid does everywhere. On by default: on two-digit addition (Llama-3 teacher → Qwen2.5 student, 2 seeds,
    # benchmarks/RESULTS.md) held-out KL per byte 1.12 with it vs 9.11 without (SFT 1.12)
    shifted_matching: bool = True
    # how the two vocabularies are paired for the hybrid's matched part: "bytes" (gold: tokens that spell the same
    # canonical bytes, `Ġthe` = `▁the`) or "raw" (TRL 1.16: identical piece strings from get_vocab(), `Ġthe` ≠ `▁the`;
    # for comparison, benchmarks/bench_quality.py; needs shifted_matching: false, which TRL does not have either)
    vocab_match: Literal["bytes", "raw"] = "bytes"
    # "auto": the fused CPU kernels (gold.losses.fused: values and gradient in one pass set, no (G, V)
    # rows) for the hybrid and ULD terms when the logits are float32 on the CPU and ULD is quantized;
    # the composed torch path otherwise. "fused" insists (and says why it cannot), "torch" never fuses.
    implementation: Literal["auto", "fused", "torch"] = "auto"
    # the GPU path (gold.losses.hidden): run each model without its output layer and apply the layer to the rows a
    # chunk of groups needs, recomputed in backward, so no (B, T, V) logits exist. "auto": on CUDA; "always": wherever
    # it can (CPU too); "never" (not on/off: YAML reads those as booleans). A side it cannot serve (an architecture
    # gold.losses.head does not reproduce, a sharded output layer, a served or cached teacher) takes its logits, and
    # the trainer logs why once
    hidden_states: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        weights = ("hybrid_weight", "uld_weight", "span_weight", "byte_marginal_weight", "projection_weight")
        for name in (*weights, "sft_weight", "opd_weight"):
            if not 0 <= getattr(self, name) <= MAX_WEIGHT:
                raise ValueError(f"LossConfig.{name} must be in [0, {MAX_WEIGHT:g}] (a larger scale belongs in the "
                                 f"learning rate), got {getattr(self, name)}")  # fmt: skip
        if sum(getattr(self, name) for name in (*weights, "opd_weight")) <= 0:
            raise ValueError(f"LossConfig needs at least one positive term weight among {', '.join(weights)}, "
                             "opd_weight")  # fmt: skip
        funcs, weights_given = self.reward_funcs, self.reward_weights
        if not isinstance(funcs, (list, tuple)) or not all(isinstance(name, str) for name in funcs):
            raise ValueError(f"LossConfig.reward_funcs must be a list of 'module:function' names, got {funcs!r}; "
                             f"write [{funcs}] for one function")  # fmt: skip
        if weights_given is not None and (not isinstance(weights_given, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights_given)):  # fmt: skip
            raise ValueError(f"LossConfig.reward_weights must be a list of numbers, got {weights_given!r}")
        if self.reward_funcs and self.opd_weight <= 0:
            raise ValueError("LossConfig.reward_funcs enter the loss through OPD-RL: set opd_weight > 0 (opd_alpha 0 "
                             "for rewards alone, GRPO-style)")  # fmt: skip
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"LossConfig.reward_weights has {len(self.reward_weights)} weights for "
                             f"{len(self.reward_funcs)} reward_funcs; give one per function")  # fmt: skip
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"LossConfig.beta must be in [0, 1], got {self.beta}")
        for name in ("student_temperature", "teacher_temperature"):
            if not TEMPERATURES[0] <= getattr(self, name) <= TEMPERATURES[1]:
                low, high = TEMPERATURES
                raise ValueError(f"LossConfig.{name} must be in [{low}, {high}] ({TEMPERATURE_WHY}), "
                                 f"got {getattr(self, name)}")  # fmt: skip
        if self.hybrid_weighting not in ("mass", "fixed"):
            raise ValueError(f"LossConfig.hybrid_weighting must be 'mass' or 'fixed', got {self.hybrid_weighting!r}")
        if self.uld_method not in ("auto", "exact", "quantized", "topk"):
            raise ValueError(f"LossConfig.uld_method must be auto, exact, quantized or topk, got {self.uld_method!r}")
        if self.uld_top_k < 1:
            raise ValueError(f"LossConfig.uld_top_k must be >= 1, got {self.uld_top_k}")
        if self.implementation not in ("auto", "fused", "torch"):
            raise ValueError(f"LossConfig.implementation must be auto, fused or torch, got {self.implementation!r}")
        if self.hidden_states not in ("auto", "always", "never"):
            hint = " (YAML reads on/off/yes/no as booleans)" if isinstance(self.hidden_states, bool) else ""
            raise ValueError(
                f"LossConfig.hidden_states must be auto, always or never, got {self.hidden_states!r}{hint}"
            )
        if self.vocab_match not in ("bytes", "raw"):
            raise ValueError(f"LossConfig.vocab_match must be 'bytes' or 'raw', got {self.vocab_match!r}")
        if self.vocab_match == "raw" and self.shifted_matching:
            raise ValueError("LossConfig.vocab_match 'raw' (TRL's piece-string pairing) draws no shifted pairs: set "
                             "shifted_matching: false with it")  # fmt: skip
        if self.chunk_groups is not None and self.chunk_groups < 1:
            raise ValueError(f"LossConfig.chunk_groups must be >= 1 or None, got {self.chunk_groups}")


@dataclass(frozen=True)
class AlignmentConfig:
    """How the two tokenizations of a completion are aligned."""

    # most bytes (share of both streams) a tokenizer may rewrite before alignment raises; a rewrite the
    # tokenizer's own normalizer explains (NFC) is always accepted
    max_edit_fraction: float = 0.5
    # a completion that ended gets one zero-byte end group (each side's end token after its last byte), so
    # the student learns to stop; false drops it from every term, like Oumi's uld_skip_student_eos and
    # uld_skip_teacher_eos both on (one side alone has no meaning here: the end is an event both predict)
    end_group: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.end_group, bool):
            raise ValueError(f"AlignmentConfig.end_group must be true or false, got {self.end_group!r}")
        if not 0.0 <= self.max_edit_fraction <= 1.0:
            raise ValueError(f"AlignmentConfig.max_edit_fraction must be in [0, 1], got {self.max_edit_fraction}")


@dataclass(frozen=True)
class RolloutConfig:
    """Where completions come from. Names follow TRL's GOLDConfig."""

    # probability that a gradient-accumulation slice uses student-generated completions (on-policy). It
    # draws slices, not rows: an on-policy slice holds num_generations rollouts of each of its prompts, so
    # the share of rows that are on-policy is higher when num_generations > 1 (both shares are logged)
    lmbda: float = 0.5
    # off-policy slices use teacher-generated completions instead of the dataset's
    seq_kd: bool = False
    # completion tokens generated (and dataset completions truncated to, in student tokens)
    max_completion_length: int = 128
    # prompts longer than this (in either side's tokens) raise; None: no limit
    max_prompt_length: int | None = 512
    # sampling; temperature 0 means greedy
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 0
    # completions sampled per prompt
    num_generations: int = 1
    # --- vLLM (TRL GOLDConfig names; gold.rollout.vllm). Off: transformers' generate ---
    use_vllm: bool = False
    # "colocate": an in-process engine per training process; "server": a `gold vllm-serve` on other devices
    vllm_mode: Literal["colocate", "server"] = "colocate"
    # server address: the base URL, else http://host:port
    vllm_server_base_url: str | None = None
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8001
    # seconds to wait for the server to answer /health before the first rollout
    vllm_server_timeout: float = 240.0
    # colocate: share of the accelerator's memory the engine may take (weights + KV cache); CUDA only
    vllm_gpu_memory_utilization: float = 0.9
    vllm_tensor_parallel_size: int = 1
    # the engine's context length (prompt + completion); None: the model's own
    vllm_max_model_length: int | None = None
    # push the student's weights into the engine every this many optimizer steps (1: every step, on-policy)
    vllm_sync_frequency: int = 1
    # colocate on CUDA: free the engine's memory while training (sleep after sampling, wake before); not on CPU
    vllm_enable_sleep_mode: bool = False
    # constrain every completion to this regular expression (vLLM structured outputs)
    vllm_structured_outputs_regex: str | None = None
    # folder for the weights a server reloads (must be visible to the server; default: a temporary folder)
    vllm_weights_dir: str | None = None
    # prompts per engine call; None: every on-policy prompt of an optimizer step in one call (as TRL)
    generation_batch_size: int | None = None
    # deprecated: "hf" or "vllm"; use use_vllm
    engine: str | None = None
    # every this many steps (and at the first), print a few rows of a batch with, per group, each model's top token
    # (TensorBoard text / W&B table when reported there; gold.training.completions_log); None: off
    log_completions_steps: int | None = None
    num_completions_to_print: int = 3

    def __post_init__(self) -> None:
        self._check_sampling()
        self._check_vllm()

    def _check_sampling(self) -> None:
        _require(self, "lmbda", 0.0 <= self.lmbda <= 1.0, "be in [0, 1]")
        _require(self, "max_completion_length", self.max_completion_length >= 1, "be >= 1")
        limit = self.max_prompt_length
        _require(self, "max_prompt_length", limit is None or limit >= 1, "be >= 1 or None")
        low, high = TEMPERATURES
        _require(self, "temperature", self.temperature == 0 or low <= self.temperature <= high,
                 f"be 0 (greedy) or in [{low}, {high}] ({TEMPERATURE_WHY})")  # fmt: skip
        _require(self, "top_p", 0.0 < self.top_p <= 1.0, "be in (0, 1]")
        _require(self, "top_k", self.top_k >= 0, "be >= 0 (0: off)")
        _require(self, "num_generations", self.num_generations >= 1, "be >= 1")
        every = self.log_completions_steps
        _require(self, "log_completions_steps", every is None or every >= 1, "be >= 1 or None (off)")
        _require(self, "num_completions_to_print", self.num_completions_to_print >= 1, "be >= 1")
        size = self.generation_batch_size
        _require(self, "generation_batch_size", size is None or size >= 1, "be >= 1 or None")

    def _check_vllm(self) -> None:
        if self.engine is not None:
            _require(self, "engine", self.engine in ("hf", "vllm"), "be 'hf' or 'vllm' (deprecated: use use_vllm)")
            _require(self, "engine", not (self.use_vllm and self.engine == "hf"),
                     "not contradict use_vllm: true (drop the deprecated engine field)")  # fmt: skip
            warnings.warn(f"RolloutConfig.engine is deprecated; write use_vllm: {str(self.engine == 'vllm').lower()}",
                          DeprecationWarning, stacklevel=3)  # fmt: skip
            object.__setattr__(self, "use_vllm", self.engine == "vllm")
            object.__setattr__(self, "engine", None)
        _require(self, "vllm_mode", self.vllm_mode in ("colocate", "server"), "be 'colocate' or 'server'")
        _require(self, "vllm_sync_frequency", self.vllm_sync_frequency >= 1, "be >= 1")
        _require(self, "vllm_tensor_parallel_size", self.vllm_tensor_parallel_size >= 1, "be >= 1")
        _require(self, "vllm_gpu_memory_utilization", 0.0 < self.vllm_gpu_memory_utilization <= 1.0, "be in (0, 1]")
        length = self.vllm_max_model_length
        _require(self, "vllm_max_model_length", length is None or length >= 2, "be >= 2 or None")
        _require(self, "vllm_server_port", 0 < self.vllm_server_port < 65536, "be a TCP port (1-65535)")
        _require(self, "vllm_server_timeout", self.vllm_server_timeout > 0, "be > 0 seconds")
        if not self.use_vllm:
            for name, default in {"vllm_structured_outputs_regex": None, "vllm_enable_sleep_mode": False}.items():
                _require(self, name, getattr(self, name) == default,
                         "stay unset without use_vllm: true (transformers' generate has no such option)")  # fmt: skip
        if self.use_vllm and self.vllm_mode == "server":
            _require(self, "vllm_enable_sleep_mode", not self.vllm_enable_sleep_mode,
                     "stay false in server mode (sleep applies to a colocated engine)")  # fmt: skip
        if self.vllm_structured_outputs_regex is not None:
            try:
                re.compile(self.vllm_structured_outputs_regex)
            except re.error as err:
                _require(self, "vllm_structured_outputs_regex", False, f"be a regular expression ({err})")

    @property
    def vllm_server_url(self) -> str:
        """The server's base URL: ``vllm_server_base_url``, else ``http://host:port``."""
        if self.vllm_server_base_url:
            return self.vllm_server_base_url.rstrip("/")
        return f"http://{self.vllm_server_host}:{self.vllm_server_port}"


def _require(config: Any, name: str, ok: bool, rule: str) -> None:
    """Raises ``ValueError("<Class>.<name> must <rule>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{type(config).__name__}.{name} must {rule}, got {getattr(config, name)!r}")


@dataclass(frozen=True)
class DataConfig:
    """The training data: a JSONL/JSON file or a dataset directory saved with ``datasets``."""

    # path to .jsonl / .json, or a directory from Dataset.save_to_disk
    path: str = ""
    # rows with `prompt` + `completion` (strings) or `messages` (last assistant turn is the completion)
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    # optional boolean column: false marks a completion cut by a length limit (a teacher sample that did not
    # stop), which gets no end group; rows without it are whole completions
    ended_field: str = "ended"
    # the column naming each row's teacher when the recipe has several (`teachers:`, routing); ignored with one
    teacher_field: str = "teacher_id"
    # held-out rows scored every training.eval_steps in both directions (forward KL per byte on their
    # completions; reverse KL, the teacher's bits per byte and the stop rate on student samples), logged as eval/*
    eval_path: str | None = None
    # student samples per held-out prompt for the reverse direction
    eval_samples: int = 1
    # a hub dataset id in `path`: its configuration and split (datasets.load_dataset(path, name, split=split))
    name: str | None = None
    split: str = "train"
    # read training rows as batches need them instead of all up front (bounded memory; needs training.max_steps;
    # a bad row or an over-long prompt then fails when reached, not before training)
    streaming: bool = False

    def __post_init__(self) -> None:
        if self.eval_samples < 1:
            raise ValueError(f"DataConfig.eval_samples must be >= 1, got {self.eval_samples}")
        if not self.path:
            raise ValueError("DataConfig.path is empty; give a .jsonl/.json file or a saved dataset directory")


@dataclass(frozen=True)
class GoldConfig:
    """A distillation run: the two models, the data, and how to align, roll out and score.

    ``training`` holds ``transformers.TrainingArguments`` fields (``output_dir``, ``learning_rate``,
    ``max_steps``, ``report_to``, ...), checked when the trainer is built.
    """

    student: ModelConfig
    # the one teacher (None when ``teachers`` names several)
    teacher: ModelConfig | None
    data: DataConfig
    loss: LossConfig = field(default_factory=LossConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    training: dict[str, Any] = field(default_factory=dict)
    # several teachers, id → teacher section: each row is scored by the teacher its ``data.teacher_field`` names
    teachers: dict[str, ModelConfig] = field(default_factory=dict)
    # mixing instead of routing: every row is scored by every teacher of weight > 0 and their losses are added
    teacher_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if (self.teacher is None) == (not self.teachers):
            raise ValueError("give either teacher: (one teacher) or teachers: (an id → teacher section mapping, with "
                             "at least one teacher), not both or neither")  # fmt: skip
        if self.teacher_weights is not None:
            if not self.teachers:
                raise ValueError("teacher_weights mixes the teachers of teachers:; with one teacher: leave it out")
            check_teacher_weights(self.teacher_weights, list(self.teachers))


def check_teacher_weights(weights: dict[str, float], teacher_ids: list[str]) -> None:
    """Mixing weights name known teachers, are finite numbers ≥ 0, and at least one is > 0; else ``ValueError``
    naming the bad value."""
    unknown = sorted(set(weights) - set(teacher_ids))
    if unknown:
        raise ValueError(f"teacher_weights names {', '.join(map(repr, unknown))}, which is not a teacher; the "
                         f"teachers are {', '.join(map(repr, teacher_ids))}")  # fmt: skip
    for teacher_id, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ValueError(f"teacher_weights[{teacher_id!r}] must be a finite number >= 0, got {weight!r}")
    if not any(weight > 0 for weight in weights.values()):
        raise ValueError(f"teacher_weights are all 0 ({weights}): give at least one teacher a weight > 0")
