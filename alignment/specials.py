"""Special (control) tokens: BOS/EOS/PAD and chat-template markers.

They cover no bytes of the text, so they are zero-width and belong to no group. A text that merely
*contains* a special token's string (``<|im_end|>`` typed inside a completion) is text: encode it with
:func:`encode_text`, which never turns it into a control token, so a completion cannot inject one.
"""

from __future__ import annotations

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
