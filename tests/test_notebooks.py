"""The notebooks run top to bottom (executed with nbclient) without a warning, and are committed without outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"alignment_inspection.ipynb", "distillation_walkthrough.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"


def _no_widgets(text: str) -> bool:
    """tqdm's warning that ipywidgets is missing, where it is: the [notebooks] extra brings it (through jupyter),
    the [test] extra's kernel alone does not."""
    return "TqdmWarning: IProgress not found" in text and importlib.util.find_spec("ipywidgets") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    client.execute()
    code_cells = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors
    stderr = [o.text for c in code_cells for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    warned = [text for text in stderr if ("Warning" in text or "warning:" in text.lower()) and not _no_widgets(text)]
    assert not warned, f"{path.name} warns: {warned}"
