"""Fast tokenizers built from tiktoken-format BPE ranks (Llama-3, Qwen2.5, Mistral Tekken).

The derivation is transformers' own ``TikTokenConverter`` (vocab = byte-level piece → rank; merges =
the splits of every token into two existing tokens, ordered by rank; ``ignore_merges``), fed with
ranks read from the files the zoo packages ship, so no tiktoken download is ever attempted. Special
tokens sit at their published ids.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import TikTokenConverter

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5 / Qwen3 special tokens, from id 151643 on (public tokenizer definition).
QWEN2_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]

# Llama-3.1 special tokens, from id 128000 on; the rest of the 256 are reserved.
_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
LLAMA3_SPECIALS = _LLAMA3_NAMED + [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - 8)]

# Mistral Tekken: ids 0..999 are control tokens, ordinary tokens start at 1000.
_TEKKEN_NAMED = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]  # fmt: skip


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Ranks of a tiktoken ``.tiktoken``/``tokenizer.model`` file (``base64 rank`` per line)."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def read_tekken_ranks(path: Path) -> tuple[dict[bytes, int], str, int]:
    """Ranks, pre-tokenizer pattern and number of control ids of a Tekken JSON file."""
    spec = json.loads(path.read_text())
    config = spec["config"]
    num_special = int(config["default_num_special_tokens"])
    num_ranks = int(config["default_vocab_size"]) - num_special
    ranks = {base64.b64decode(entry["token_bytes"]): entry["rank"] for entry in spec["vocab"][:num_ranks]}
    return ranks, config["pattern"], num_special


class _RanksConverter(TikTokenConverter):  # type: ignore[misc]
    """TikTokenConverter reading ranks from memory instead of a tiktoken URL."""

    def __init__(self, ranks: dict[bytes, int]) -> None:
        super().__init__(vocab_file="<memory>")
        self._ranks = ranks

    def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
        return self._ranks


def tokenizer_from_ranks(
    ranks: dict[bytes, int],
    *,
    pattern: str,
    specials: dict[str, int],
    id_offset: int = 0,
    nfc: bool = False,
) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` equivalent to tiktoken with these ranks.

    Args:
        ranks: token bytes → rank.
        pattern: the pre-tokenizer regex.
        specials: control token string → id.
        id_offset: added to every rank to get the id (Tekken puts 1000 control ids first).
        nfc: apply Unicode NFC before tokenizing (Qwen).
    """
    vocab, merges = _RanksConverter(ranks).extract_vocab_merges_from_model("<memory>")
    vocab = {piece: rank + id_offset for piece, rank in vocab.items()}
    vocab.update(specials)
    tokenizer = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    ordered = sorted(specials, key=specials.__getitem__)
    tokenizer.add_special_tokens([AddedToken(tok, normalized=False, special=True) for tok in ordered])
    return tokenizer


def qwen2_tokenizer(path: Path) -> Tokenizer:
    ranks = read_tiktoken_ranks(path)
    specials = {tok: len(ranks) + i for i, tok in enumerate(QWEN2_SPECIALS)}
    return tokenizer_from_ranks(ranks, pattern=QWEN2_PATTERN, specials=specials, nfc=True)


def llama3_tokenizer(path: Path) -> Tokenizer:
    ranks = read_tiktoken_ranks(path)
    specials = {tok: len(ranks) + i for i, tok in enumerate(LLAMA3_SPECIALS)}
    return tokenizer_from_ranks(ranks, pattern=LLAMA3_PATTERN, specials=specials)


def tekken_tokenizer(path: Path) -> Tokenizer:
    ranks, pattern, num_special = read_tekken_ranks(path)
    names = _TEKKEN_NAMED + [f"<SPECIAL_{i}>" for i in range(len(_TEKKEN_NAMED), num_special)]
    specials = {tok: i for i, tok in enumerate(names)}
    return tokenizer_from_ranks(ranks, pattern=pattern, specials=specials, id_offset=num_special)


def tiktoken_reference(ranks: dict[bytes, int], *, pattern: str, specials: dict[str, int]) -> Any:
    """A ``tiktoken.Encoding`` over the same ranks, for token-for-token verification in tests."""
    import tiktoken

    return tiktoken.Encoding(name="gold-reference", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
