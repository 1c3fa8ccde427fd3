"""The architecture stays visible: parts import only from parts below them, and the packaging
lists every part (so a wheel holds what an editable install sees).

The order is the data flow: core helpers -> data -> model -> synthetic (a producer of both data
and a true model) -> losses -> training -> tuning -> evaluation / export -> sweeps / bench ->
the commands and the Python API at the top level.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

PKG = REPO / "birdflow"
CORE = {"errors", "io", "types", "app"}  # plumbing every part may use
RANK = {"core": 0, "data": 1, "model": 2, "synthetic": 3, "losses": 4, "training": 5,
        "tuning": 6, "evaluation": 7, "export": 7, "sweeps": 8, "bench": 8, "commands": 9}


def part_of(module: str) -> str:
    """``birdflow.data.grid`` -> ``data``; top-level modules are commands or core plumbing."""
    parts = module.split(".")
    if len(parts) == 1:
        return "commands"
    if parts[1] in RANK:
        return parts[1]
    return "core" if parts[1] in CORE else "commands"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def birdflow_imports(path: Path) -> set[str]:
    """Every ``birdflow...`` module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "birdflow"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "birdflow":
            out.add(node.module)
    return out


def test_no_part_imports_from_a_part_above_it():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        importer = module_name(path)
        # a part's __main__ is a command that happens to live beside its part
        mine = "commands" if path.name == "__main__.py" else part_of(importer)
        for imported in birdflow_imports(path):
            theirs = part_of(imported)
            if imported != "birdflow" and RANK[theirs] > RANK[mine]:
                bad.append(f"{importer} ({mine}) imports {imported} ({theirs})")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    """The rule is not vacuous: an upward import in a lower part is found."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from birdflow.evaluation.metrics import weekly_distr_cor\n")
    assert birdflow_imports(f) == {"birdflow.evaluation.metrics"}
    assert RANK[part_of("birdflow.evaluation.metrics")] > RANK[part_of("birdflow.data.grid")]


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    assert found | {"birdflow.conf"} == listed


@pytest.mark.parametrize("part", sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists()))
def test_readme_layout_names_each_part(part):
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 3)]
    assert part in RANK and f"birdflow/{part}/" in layout


def test_modules_stay_small():
    """Modules of at most ~300 lines keep the code readable (README: Layout)."""
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
