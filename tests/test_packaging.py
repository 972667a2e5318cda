"""The package as users install it: declared dependencies match the imports, optional packages never break import,
and the metadata a wheel carries is complete.

The wheel itself (built, installed into a fresh environment, run from outside the checkout) is checked by
``.ci/wheel_check.sh``, which CI runs after ``make demo``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gold.extras import EXTRA_OF, MissingExtra, install_hint, require

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("alignment", "gold")
OPTIONAL = ("triton", "vllm", "datasets", "pyarrow", "peft", "wandb", "deepspeed")
# what can be missing alone: datasets needs pyarrow, so pyarrow is absent only together with datasets (blocking it
# alone breaks transformers' own `import datasets`, an environment pip cannot produce)
ABSENT_ALONE = [("triton",), ("vllm",), ("datasets",), ("datasets", "pyarrow"), ("peft",), ("wandb",), ("deepspeed",)]
# import names whose distribution is named otherwise and may not be installed here to ask
DISTRIBUTION_OF = {"yaml": "pyyaml", "tensorboardX": "tensorboardx", "deepspeed": "deepspeed"}


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_import_guard(node: ast.Try) -> bool:
    """A ``try: import x / except ImportError:`` block: what it imports is optional by construction."""
    names = {getattr(handler.type, "id", None) for handler in node.handlers}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _third_party_imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(top-level names imported unconditionally at module level, those imported anywhere else) of third-party
    packages; ``if TYPE_CHECKING:`` blocks and guarded ``try`` blocks count as 'anywhere else'."""
    module_level: set[str] = set()
    elsewhere: set[str] = set()

    def visit(node: ast.AST, *, at_module_level: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                return
            roots = {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - set(PACKAGES) - {""}
            (module_level if at_module_level else elsewhere).update(roots)
            return
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        lazy |= isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        lazy |= isinstance(node, ast.Try) and _is_import_guard(node)
        for child in ast.iter_child_nodes(node):
            visit(child, at_module_level=at_module_level and not lazy)

    visit(tree, at_module_level=True)
    return module_level, elsewhere - module_level


def _distribution(module: str) -> str:
    if module in DISTRIBUTION_OF:
        return DISTRIBUTION_OF[module]
    found = importlib.metadata.packages_distributions().get(module)
    if found:
        return str(canonicalize_name(found[0]))
    return str(canonicalize_name(module))


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {str(canonicalize_name(Requirement(line).name)) for line in project["dependencies"]}
    extras = {name: {str(canonicalize_name(Requirement(line).name)) for line in lines}
              for name, lines in project["optional-dependencies"].items()}  # fmt: skip
    return core, extras


def test_module_level_imports_are_core_dependencies_and_the_rest_belong_to_an_extra() -> None:
    core, extras = _declared()
    in_some_extra = set().union(*extras.values())
    problems = []
    for path in _modules():
        module_level, elsewhere = _third_party_imports(ast.parse(path.read_text()))
        where = path.relative_to(ROOT)
        problems += [f"{where}: imports {name} ({_distribution(name)}) at module level, but it is not a core "
                     "dependency in pyproject.toml" for name in sorted(module_level)
                     if _distribution(name) not in core]  # fmt: skip
        problems += [f"{where}: imports {name} ({_distribution(name)}) inside a function or guard, but no extra "
                     "of pyproject.toml installs it" for name in sorted(elsewhere)
                     if _distribution(name) not in core | in_some_extra]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_every_optional_package_named_in_gold_extras_is_an_extra_of_pyproject() -> None:
    _, extras = _declared()
    for module, extra in EXTRA_OF.items():
        assert extra in extras, f"gold.extras says {module} comes with [{extra}], which pyproject.toml lacks"
        assert _distribution(module) in extras[extra], f"[{extra}] of pyproject.toml does not install {module}"


def test_the_import_checker_sees_module_level_function_level_and_guarded_imports() -> None:
    source = textwrap.dedent("""
        import numpy
        from torch import nn
        from gold.config import LossConfig
        try:
            import triton
        except ImportError:
            triton = None
        def f():
            import datasets
    """)
    module_level, elsewhere = _third_party_imports(ast.parse(source))
    assert module_level == {"numpy", "torch"}
    assert elsewhere == {"triton", "datasets"}


def test_require_names_the_feature_and_the_extra() -> None:
    with pytest.raises(MissingExtra, match=r"the teacher cache needs pyarrow.*pip install 'gold-distill\[datasets\]'"):
        require("pyarrow.not_a_module", feature="the teacher cache")
    assert install_hint("vllm.distributed") == "pip install 'gold-distill[vllm]'"
    with pytest.raises(KeyError, match="'numpy' is not one of gold's optional packages"):
        install_hint("numpy")


def test_metadata_has_version_license_classifiers_and_python_requires() -> None:
    import gold
    from gold.version import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["requires-python"].startswith(">=3.10")
    assert any(line.startswith("Programming Language :: Python :: 3.11") for line in project["classifiers"])
    assert gold.__version__ == __version__ == importlib.metadata.version("gold-distill")
    result = subprocess.run([sys.executable, "-m", "gold.cli", "--version"], capture_output=True, text=True,
                            timeout=120, check=True)  # fmt: skip
    assert result.stdout.strip() == f"gold-distill {__version__}"


def _blocked_run(blocked: tuple[str, ...], body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter where each of ``blocked`` fails to import, as if not installed."""
    script = f"import sys\nfor name in {list(blocked)!r}:\n    sys.modules[name] = None\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**_env(), "GOLD_TEST_TMP": str(tmp_path)})  # fmt: skip


def _env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}


IMPORT_EVERY_MODULE = """
    import importlib, pkgutil
    import alignment, gold
    failed = []
    for package in (alignment, gold):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(".__main__"):  # runs the command line: importing it is running `gold`
                continue
            try:
                importlib.import_module(info.name)
            except Exception as err:
                failed.append(f"{info.name}: {type(err).__name__}: {err}")
    print("\\n".join(failed) or "all imported")
"""


@pytest.mark.parametrize("blocked", ABSENT_ALONE, ids="+".join)
def test_every_module_imports_without_each_optional_package(blocked: tuple[str, ...], tmp_path: Path) -> None:
    result = _blocked_run(blocked, IMPORT_EVERY_MODULE, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("all imported"), result.stdout


def test_without_any_optional_package_every_module_imports_and_the_cli_runs(tmp_path: Path) -> None:
    body = (
        IMPORT_EVERY_MODULE
        + """
    import os
    from gold.cli import main
    out = os.environ["GOLD_TEST_TMP"]
    assert main(["demo", "--alignment-only", "--out", out + "/demo"]) == 0
    code = main(["train", "examples/tiny_recipe.yaml", "training.max_steps=2", "training.save_steps=2",
                 f"training.output_dir={out}/tiny"])
    print("train exit", code)
    """
    )
    result = _blocked_run(OPTIONAL, body, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "all imported" in result.stdout, result.stdout
    assert "train exit 0" in result.stdout, (result.stdout + result.stderr)[-4000:]
    assert (tmp_path / "tiny" / "checkpoint-2").is_dir()


def test_the_teacher_cache_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    body = """
    import os
    from gold.teacher.cache import TeacherCache
    folder = os.environ["GOLD_TEST_TMP"]
    open(folder + "/info.json", "w").write("{}")
    try:
        TeacherCache(folder)
    except ImportError as err:
        print("said:", err)
    """
    result = _blocked_run(("datasets", "pyarrow"), body, tmp_path)
    assert "said: the teacher cache needs pyarrow, which is not installed: pip install 'gold-distill[datasets]'" in (
        result.stdout
    ), result.stdout + result.stderr[-3000:]
