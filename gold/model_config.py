"""A recipe's model section (``student:`` / ``teacher:``): which model, its tokenizer, dtype, loading options and
LoRA adapter; re-exported by :mod:`gold.config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    """A model to load: a zoo name (``gold.models.zoo``), a local directory, or ``tiny`` (random, from ``tiny``)."""

    # zoo model name, local Hugging Face directory, hub id, or "tiny" for a random model built from `tiny`; a teacher
    # may also be "self" (a frozen copy of the student's start) or "self-dynamic" (the student itself, no copy):
    # self-distillation, usually with a privileged teacher_prompt per row
    model: str = ""
    # zoo tokenizer name or directory; default: the model's own
    tokenizer: str | None = None
    # parameter dtype (``torch_dtype``: transformers' older name for it, accepted as in TRL's model_init_kwargs)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_dtype: str | None = None
    # a hub model's branch, tag or commit (``from_pretrained(revision=...)``); hub ids only
    revision: str | None = None
    # ``from_pretrained(attn_implementation=...)``: "eager", "sdpa", "flash_attention_2", ...; None: transformers'
    # choice
    attn_implementation: str | None = None
    # device ("cpu", "cuda:1", ...); None: the trainer's device
    device: str | None = None
    # for model == "tiny": its sizes (hidden_size, layers, heads; gold.models.build.tiny_model); vocab from the
    # tokenizer
    tiny: dict[str, Any] = field(default_factory=dict)
    # chat template for `messages` rows: a built-in name (chatml, llama-3, gemma; see gold.models.chat) or a Jinja
    # file; None keeps the tokenizer's own (a model without one gets gold's plain format, with a warning)
    chat_template: str | None = None
    # run the model's or tokenizer's own code from its folder (a *.py its config names). A risk: that code runs with
    # your permissions; gold never runs it otherwise (such a folder is refused, naming it)
    trust_remote_code: bool = False
    # LoRA adapters, the only weights that train (gold.models.lora; gold-distill[peft]): {r, alpha, dropout,
    # target_modules} and any other peft.LoraConfig field. None: every weight trains
    peft: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._check_peft()
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"ModelConfig.trust_remote_code must be true or false, got {self.trust_remote_code!r}")
        if not self.model:
            raise ValueError("ModelConfig.model is empty; give a zoo name, a directory, or 'tiny'")
        self._fold_torch_dtype()
        if self.dtype not in DTYPES:
            raise ValueError(f"ModelConfig.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.model == "tiny" and not self.tokenizer:
            raise ValueError("a 'tiny' random model needs ModelConfig.tokenizer (a zoo name or directory)")
        if self.chat_template is not None and not self.chat_template:
            raise ValueError("ModelConfig.chat_template is empty; give a built-in name or a Jinja file, or omit it")
        if self.tiny and self.model != "tiny":
            raise ValueError(f"ModelConfig.tiny is only read for model 'tiny', got model {self.model!r}")
        self._check_tiny()

    def _fold_torch_dtype(self) -> None:
        """``torch_dtype`` (``"bfloat16"`` or ``"torch.bfloat16"``) is ``dtype``; the two may not disagree."""
        if self.torch_dtype is None:
            return
        name = str(self.torch_dtype).removeprefix("torch.")
        if self.dtype not in ("auto", name):
            raise ValueError(f"ModelConfig.torch_dtype={self.torch_dtype!r} and dtype={self.dtype!r} disagree; give "
                             "one of them (dtype)")  # fmt: skip
        object.__setattr__(self, "dtype", name)
        object.__setattr__(self, "torch_dtype", None)

    def _check_peft(self) -> None:
        """``peft``: a mapping; r a positive integer, alpha positive, dropout in [0, 1), target_modules name(s)."""
        if self.peft is None:
            return
        peft, where = self.peft, "ModelConfig.peft"
        if not isinstance(peft, dict) or not peft:
            raise ValueError(f"{where} must be a non-empty mapping such as {{r: 16, alpha: 32}}, got {peft!r}")
        checks = {"r": (lambda v: isinstance(v, int) and v >= 1, "the adapter rank, a positive integer"),
                  "alpha": (lambda v: isinstance(v, int | float) and v > 0, "a positive number (scale alpha / r)"),
                  "dropout": (lambda v: isinstance(v, int | float) and 0 <= v < 1, "a number in [0, 1)"),
                  "target_modules": (lambda v: isinstance(v, str) or (isinstance(v, list) and bool(v) and all(
                      isinstance(t, str) for t in v)), "a name pattern or a list such as [q_proj, v_proj]"),
                  }  # fmt: skip
        for key, (ok, what) in checks.items():
            if key in peft and (isinstance(peft[key], bool) or not ok(peft[key])):
                raise ValueError(f"{where}.{key} must be {what}, got {peft[key]!r}")

    def _check_tiny(self) -> None:
        """``tiny`` takes gold.models.build.tiny_model's sizes: positive integers, hidden_size a multiple of heads."""
        known = ("hidden_size", "layers", "heads")
        for key, value in self.tiny.items():
            if key not in known:
                raise ValueError(f"ModelConfig.tiny has no key {key!r}; it takes {', '.join(known)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.tiny.{key} must be a positive integer, got {value!r}")
        hidden, heads = self.tiny.get("hidden_size", 64), self.tiny.get("heads", 4)
        if hidden % heads:
            raise ValueError(f"ModelConfig.tiny.hidden_size={hidden} must be a multiple of heads={heads}")
