"""Chat templates per side: built-in templates for models that ship none (the unequal-rendering warning that
points here is :func:`gold.data.rendering.unequal_rendering`).

Each model renders its own prompt (DESIGN §1). A model without a chat template gets the plain format of
:func:`gold.data.examples.plain_prompt` (``"User: …\\n\\nAssistant:"``), so with ``messages`` rows one side may see its
chat markup and the other ``Assistant:Hi there`` glued to the completion: both are trained on the same
completion bytes after very different contexts. :func:`gold.data.rendering.unequal_rendering` says so once per run,
with both
renderings; a recipe fixes it with ``student.chat_template`` / ``teacher.chat_template`` (a built-in name from
:data:`BUILTIN_TEMPLATES` or a Jinja file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# name -> (Jinja template, the special tokens it needs in the tokenizer)
BUILTIN_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        ("<|im_start|>", "<|im_end|>"),
    ),
    "llama-3": (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "gemma": (
        "{{ bos_token }}{% for message in messages %}<start_of_turn>"
        "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    # Mistral v1's [INST] format: its markers are plain text in the v1 SentencePiece vocabulary, not special tokens
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] }}"
        "{{ eos_token }}{% else %}[INST] {{ message['content'] }} [/INST]{% endif %}{% endfor %}",
        (),
    ),
}


def set_chat_template(tokenizer: Any, spec: str) -> Any:
    """Give ``tokenizer`` the chat template ``spec`` names: a built-in name or a Jinja file; returns it.

    Raises:
        ValueError: an unknown name or missing file, or a built-in whose special tokens the tokenizer lacks
            (its markers would be tokenized as plain text).
    """
    if spec in BUILTIN_TEMPLATES:
        template, markers = BUILTIN_TEMPLATES[spec]
        specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        missing = [m for m in markers if m not in specials]
        if missing:
            raise ValueError(
                f"chat template {spec!r} needs the special tokens {missing}, which this tokenizer lacks; choose "
                f"another of {', '.join(BUILTIN_TEMPLATES)} or give a Jinja file written for this tokenizer"
            )
    elif Path(spec).is_file():
        template = Path(spec).read_text(encoding="utf-8")
    else:
        raise ValueError(
            f"chat_template {spec!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor an existing Jinja file"
        )
    tokenizer.chat_template = template
    return tokenizer
