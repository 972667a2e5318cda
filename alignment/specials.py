"""Special (control) tokens: BOS/EOS/PAD and chat-template markers.

They cover no bytes of the text, so they are zero-width and belong to no group. A text that merely
*contains* a special token's string (``<|im_end|>`` typed inside a completion) is text: encode it with
:func:`encode_text`, which never turns it into a control token, so a completion cannot inject one.
"""

from __future__ import annotations

import json
import weakref
from typing import Any


def special_token_ids(backend: Any) -> set[int]:
    """Ids of the added tokens that the tokenizer marks special.

    Args:
        backend: a ``tokenizers.Tokenizer``.
    """
    return {token_id for token_id, token in backend.get_added_tokens_decoder().items() if token.special}


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as plain text: no BOS/EOS, special-token strings tokenized as text.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        text: the text to encode.
    """
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True)
    return list(encoded["input_ids"])


_CONTINUATION: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _without_dummy_prefix(node: Any) -> Any:
    """The JSON of a normalizer / pre-tokenizer with every dummy-prefix step switched off."""
    if isinstance(node, list):
        return [_without_dummy_prefix(n) for n in node if not (isinstance(n, dict) and n.get("type") == "Prepend")]
    if isinstance(node, dict):
        out = {k: _without_dummy_prefix(v) for k, v in node.items()}
        if out.get("type") == "Metaspace":
            out["prepend_scheme"] = "never"
            out.pop("add_prefix_space", None)
        return out
    return node


def _continuation_backend(tokenizer: Any) -> Any:
    if tokenizer not in _CONTINUATION:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        spec = json.loads(backend.to_str())
        rewritten = {key: _without_dummy_prefix(spec.get(key)) for key in ("normalizer", "pre_tokenizer")}
        if isinstance(rewritten["normalizer"], dict) and rewritten["normalizer"].get("type") == "Prepend":
            rewritten["normalizer"] = None
        if all(rewritten[key] == spec.get(key) for key in rewritten):
            _CONTINUATION[tokenizer] = None  # no dummy prefix anywhere: plain-text encoding is a continuation
        else:
            continuation = Tokenizer.from_str(json.dumps({**spec, **rewritten}))
            continuation.encode_special_tokens = True  # special-token strings in the text stay text
            _CONTINUATION[tokenizer] = continuation
    return _CONTINUATION[tokenizer]


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as the continuation of earlier text (a completion after its prompt).

    Like :func:`encode_text`, but a SentencePiece dummy prefix is never added: the ids spell exactly
    the bytes of ``text``, as they would inside the longer text (``"\\nIt"`` → ``It``, not ``▁It``).
    For byte-level and other tokenizers without a dummy prefix this is :func:`encode_text`.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        text: the continuation text.
    """
    backend = _continuation_backend(tokenizer)
    if backend is None:
        return encode_text(tokenizer, text)
    return list(backend.encode(text, add_special_tokens=False).ids)
