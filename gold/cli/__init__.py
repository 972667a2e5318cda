"""The ``gold`` command line, the top of the flow.

The parser (:mod:`gold.cli.parser`, light: ``gold --help`` answers before torch imports), the commands
(:mod:`gold.cli.commands`: ``train``, ``eval``, ``align``, ``demo``, ``teacher-cache``,
``vllm-serve``), their up-front checks and one-line errors (:mod:`gold.cli.checks`), YAML recipes with
``section.key=value`` overrides (:mod:`gold.cli.recipe`), building a run from a recipe (:mod:`gold.cli.run`), the
output-folder and resume guard (:mod:`gold.cli.guard`), the teacher cache's build command
(:mod:`gold.cli.teacher_cache`) and the embedded demo (:mod:`gold.cli.demo`, its task in :mod:`gold.cli.demo_task`;
with two teachers, ``gold demo --teachers 2``, :mod:`gold.cli.demo_teachers`).

Imports: every wing. Nothing below imports this wing.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``gold`` command (the console script and ``python -m gold.cli``): parses the arguments first, so that
    ``--help`` and usage errors answer before the commands' heavy imports."""
    from gold.cli.parser import main as run

    return run(argv)
