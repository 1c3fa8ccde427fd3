"""The tutorial notebooks: committed without outputs, in sync with their cell files, and runnable.

The execution test starts a real Jupyter kernel (ipykernel, kernel name ``python3``) through
nbclient. jupyter_client launches a kernelspec whose command is ``python`` with the running
interpreter, so the kernel sees the same virtual environment as pytest.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_TIMEOUT_S = 300  # whole notebook; each runs in about a minute on a 2-core CPU


def _load_builder():
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOK_DIR / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_exist():
    names = {path.name for path in NOTEBOOKS}
    assert "01_implicit_differentiation_lasso.ipynb" in names
    assert "02_w2_vs_l2_location_loss.ipynb" in names
    assert "03_birdflow_quickstart.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name}: no code cells"
    for i, cell in enumerate(code_cells):
        assert cell.outputs == [], f"{path.name}: code cell {i} has outputs; rebuild with _build.py"
        assert cell.execution_count is None, f"{path.name}: code cell {i} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_cell_file(path):
    cell_file = NOTEBOOK_DIR / f"_cells_{path.stem}.py"
    assert cell_file.exists(), f"{path.name}: its source {cell_file.name} is missing"
    built = nbformat.writes(_load_builder().build_notebook(cell_file)) + "\n"
    assert path.read_text() == built, (
        f"{path.name} is out of date with {cell_file.name}; run .venv/bin/python notebooks/_build.py"
    )


def test_percent_script_parser_splits_cells():
    builder = _load_builder()
    cells = builder.parse_percent_script(
        "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n# %%\n\n# %%\nprint(x)\n"
    )
    assert [c.cell_type for c in cells] == ["markdown", "code", "code"]
    assert cells[0].source == "# Title\n\ntext"
    assert cells[1].source == "x = 1"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S

    def remaining_seconds(cell) -> int:  # nbclient asks before each cell: a per-notebook budget
        return max(1, int(deadline - time.monotonic()))

    client = NotebookClient(
        nb,
        timeout_func=remaining_seconds,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    printed = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream"
    )
    assert not re.search(r"\bnan\b", printed, flags=re.IGNORECASE), f"{path.name} printed a NaN"
