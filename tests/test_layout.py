"""The tree is the architecture: imports run one way through the wings, and no modules import each other.

The order (DESIGN §2), lowest first; a module may import its own wing and the wings below it, never one above:

    alignment → leaves (gold.config, gold.model_config, gold.extras, gold.version) → models → data → losses → rollout
    → teacher → evaluation → training → cli

``gold/__init__.py`` (the public API, every name imported lazily) stands above them all. Imports inside functions
count as much as those at module level: a deferred import hides a circle, it does not remove it. A module never
imports its own package's ``__init__`` (it names the module it needs), so package re-exports close no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("alignment", "leaf", "models", "data", "losses", "rollout", "teacher", "evaluation", "training", "cli", "api")
LEAVES = {"gold.config", "gold.model_config", "gold.extras", "gold.version"}


def wing(module: str) -> str:
    """The wing of a module: ``gold.losses.merge`` → losses."""
    if module.startswith("alignment"):
        return "alignment"
    if module == "gold":
        return "api"
    if module in LEAVES:
        return "leaf"
    name = module.split(".")[1]
    assert name in ORDER, f"{module} is in no wing of {ORDER}: place it in one (or add a wing to DESIGN §2 and here)"
    return name


def modules() -> dict[str, Path]:
    found = {}
    for package in ("alignment", "gold"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, anywhere in the file (``from a.b import c`` counts ``a.b.c`` when that
    is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module in known and not node.level:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= submodules or {node.module}
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_is_in_a_wing() -> None:
    for name in modules():
        wing(name)


def test_imports_run_down_the_wings_only() -> None:
    wrong = [f"{name} ({wing(name)}) imports {target} ({wing(target)})"
             for name, targets in graph().items() for target in sorted(targets)
             if ORDER.index(wing(target)) > ORDER.index(wing(name))]  # fmt: skip
    assert not wrong, "imports up the wings:\n" + "\n".join(wrong)


def test_alignment_never_imports_gold() -> None:
    wrong = [f"{name} imports {target}" for name, targets in graph().items() if name.startswith("alignment")
             for target in targets if target.startswith("gold")]  # fmt: skip
    assert not wrong, wrong


def test_no_module_imports_its_own_package() -> None:
    wrong = [f"{name} imports its package {target}" for name, targets in graph().items() for target in targets
             if name.startswith(target + ".")]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                parts.append(sorted(part))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return parts


def test_no_circles() -> None:
    found = cycles(graph())
    assert not found, "modules that import each other (directly or around a circle):\n" + "\n".join(map(str, found))


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert ORDER.index(wing("gold.cli.run")) > ORDER.index(wing("gold.teacher.build"))
    assert wing("gold.config") == "leaf" and wing("alignment.align") == "alignment"
