"""A real byte-level BPE tokenizer with a small vocabulary (~300 ids), trained in-process: a teacher whose every
column fits in one server answer (``prompt_logprobs=-1``), so served and cached rows can be checked at K = V."""

from __future__ import annotations

import functools
from typing import Any

CORPUS = [
    "What is 1 plus 2? It is 3. What is 2 plus 2? It is 4.",
    "Café ☕ 東京! Hi there 👋🏽 Say hi. The quick brown fox jumps over the lazy dog.",
    "user assistant system\n",
] * 4
TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@functools.cache
def small_vocab_tokenizer(vocab_size: int = 300) -> Any:
    """A fast tokenizer: 256 byte tokens, merges learned on a few sentences, and <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=alphabet, show_progress=False)  # fmt: skip
    core.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer
