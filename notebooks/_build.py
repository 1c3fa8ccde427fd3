"""Build the tutorial notebooks from the cell sources in ``notebooks/_cells_*.py``.

The committed ``.ipynb`` files carry no outputs; ``tests/test_notebooks.py`` executes them.
Run from the repository root after editing a cell file:

    .venv/bin/python notebooks/_build.py            # rewrite every notebook
    .venv/bin/python notebooks/_build.py --check    # exit 1 if a notebook is out of date

A cell file is a percent script: ``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown
cell whose lines are written as ``# text`` comments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse_percent_script(text: str) -> list[nbformat.NotebookNode]:
    """Split a percent script into notebook cells (markdown comments are un-commented)."""
    cells: list[nbformat.NotebookNode] = []
    kind, lines = None, []

    def flush() -> None:
        body = "\n".join(lines).strip("\n")
        if kind is None or not body:
            return
        if kind == "markdown":
            md = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.split("\n")]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(md)))
        else:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.split("\n"):
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
        else:
            lines.append(line)
    flush()
    return cells


def build_notebook(cell_file: Path) -> nbformat.NotebookNode:
    """Return an output-free notebook built from one percent-script cell file."""
    nb = nbformat.v4.new_notebook()
    nb.cells = parse_percent_script(cell_file.read_text())
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{cell_file.stem.removeprefix('_cells_')[:2]}-{i:02d}"
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale notebooks")
    args = parser.parse_args()
    stale = []
    for cell_file in sorted(NOTEBOOK_DIR.glob("_cells_*.py")):
        target = NOTEBOOK_DIR / (cell_file.stem.removeprefix("_cells_") + ".ipynb")
        text = nbformat.writes(build_notebook(cell_file)) + "\n"
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not args.check:
            tmp = target.with_suffix(".ipynb.tmp")
            tmp.write_text(text)
            tmp.replace(target)
    for name in stale:
        print(("stale: " if args.check else "wrote: ") + name)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
