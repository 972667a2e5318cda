"""Each side renders its own prompt: the warning for a pair where chat prompts reach one model without a chat
template (gold's plain format) and the other with its template. Both are then trained on the same completion
bytes after very different contexts; a recipe fixes it with ``student.chat_template`` / ``teacher.chat_template``
(a built-in of :data:`gold.models.chat.BUILTIN_TEMPLATES` or a Jinja file)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gold.data.examples import Example, prompt_ids
from gold.models.chat import BUILTIN_TEMPLATES


def unequal_rendering(student_tokenizer: Any, teacher_tokenizer: Any, examples: Sequence[Example]) -> str | None:
    """A warning with both renderings when chat prompts reach a model without a chat template and another with
    one (the first such example is shown); None when both sides render chat prompts the same way."""
    if bool(student_tokenizer.chat_template) == bool(teacher_tokenizer.chat_template):
        return None
    chat = next((e for e in examples if not isinstance(e.prompt, str)), None)
    if chat is None:
        return None
    plain_side = "student" if not student_tokenizer.chat_template else "teacher"
    renderings = []
    for role, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
        shown = tokenizer.decode(prompt_ids(tokenizer, chat.prompt)) + chat.completion
        renderings.append(f"  {role}: {shown[-160:]!r}")
    return (
        f"the {plain_side} has no chat template: chat prompts reach it in gold's plain format while the other side "
        "uses its chat template, so the two models score the same completion after different contexts:\n"
        + "\n".join(renderings)
        + f"\nset {plain_side}.chat_template in the recipe (built-ins: {', '.join(BUILTIN_TEMPLATES)}; or a Jinja file)"
    )
