"""The architecture stays visible: parts import only from parts below them, and the packaging
lists every part (so a wheel holds what an editable install sees).

The order is the data flow: core helpers -> the run directory (``birdflow.runs``) -> data ->
model -> synthetic (a producer of both data and a true model) -> losses -> training -> tuning
-> evaluation / export -> sweeps / bench -> the commands (``birdflow.cli``) and the Python API.

Two owners are enforced too: only ``birdflow/runs/`` knows the run dir's files (``run.json``,
``config.yaml``, ...), and every command lives in ``birdflow/cli/`` (the modules that keep
``python -m birdflow.<command>`` working only delegate there).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

PKG = REPO / "birdflow"
CORE = {"errors", "io", "types", "app"}  # plumbing every part may use
RANK = {"core": 0, "runs": 0.5, "data": 1, "model": 2, "synthetic": 3, "losses": 4, "training": 5,
        "tuning": 6, "evaluation": 7, "export": 7, "sweeps": 8, "bench": 8, "batch": 8.5, "commands": 9, "cli": 9}


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
def test_documented_layout_names_each_part(part):
    guide = (REPO / "docs" / "guide" / "development.md").read_text()
    layout = guide[guide.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 3)]
    assert part in RANK and f"birdflow/{part}/" in layout


def test_modules_stay_small():
    """Modules of at most ~300 lines keep the code readable (docs/guide/development.md)."""
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


# --- the run dir has one owner -------------------------------------------------------------

RUN_FILES = {"run.json", "config.yaml"}  # the files the issue names; others go through runs too
RUN_NAMES = {"RUN_JSON", "CONFIG_YAML", "METRICS_JSON", "HISTORY_CSV"}


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0].value))
    return out


def run_file_uses(path: Path) -> list[str]:
    """Where code (not docs) names a run dir file: a string holding the file name, or one of
    birdflow.runs' file-name constants."""
    tree = ast.parse(path.read_text(), str(path))
    docs, found = docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value.rsplit("/", 1)[-1] in RUN_FILES:  # a file name or path, not a message
                found.append(f"{path}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Name | ast.alias):
            name = node.id if isinstance(node, ast.Name) else node.name
            if name in RUN_NAMES:
                found.append(f"{path}:{getattr(node, 'lineno', '?')}: {name}")
    return found


def test_only_birdflow_runs_knows_the_run_dir_files():
    bad = [hit for path in sorted(PKG.rglob("*.py")) if "runs" not in path.relative_to(PKG).parts[:1]
           for hit in run_file_uses(path)]
    assert not bad, "read and write run dirs through birdflow.runs:\n" + "\n".join(bad)


def test_the_run_file_check_sees_a_violation(tmp_path):
    """Code that opens run.json or imports a file-name constant is found; docstrings are not."""
    f = tmp_path / "x.py"
    f.write_text('"""Reads run.json (docs may say so)."""\nimport json\n\n'
                 'def f(d):\n    return json.loads((d / "run.json").read_text())\n'
                 "from birdflow.runs import CONFIG_YAML\n")
    assert len(run_file_uses(f)) == 2


# --- every command lives in birdflow/cli/ --------------------------------------------------

# ``python -m birdflow.<command>`` (the README's commands) and the packages' ``__main__`` stay
# valid through these modules; each may only import its command from birdflow.cli and run it.
SHIMS = {f"birdflow/{c}.py" for c in ("train", "tune", "evaluate", "routes", "maps", "compare",
                                      "sweep", "preprocess", "download", "sparsify", "validate",
                                      "catalog")} | {
    "birdflow/__main__.py", "birdflow/export/__main__.py", "birdflow/synthetic/__main__.py",
    "birdflow/batch/__main__.py"}
# the benchmarks are flag-style programs of their own (``python -m birdflow.bench.<name>``),
# run by ``birdflow bench`` through birdflow/cli/bench.py
BENCH = "birdflow/bench/"


def is_command(tree: ast.Module) -> bool:
    """A command module: a ``@command(...)`` task, ``hydra.main`` or a ``__main__`` guard."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__":
            return True
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "main" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "hydra":
                return True
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "command"
                for d in node.decorator_list):
            return True
    return False


def only_delegates(tree: ast.Module) -> bool:
    """Docstring, ``import sys``, ``from birdflow.cli.<x> import main`` and the guard, nothing more."""
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Import) and [a.name for a in node.names] == ["sys"]:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("birdflow.cli.") \
                and [a.name for a in node.names] == ["main"]:
            continue
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
                and getattr(node.test.left, "id", "") == "__name__" and len(node.body) == 1:
            continue
        return False
    return True


def test_every_command_lives_in_birdflow_cli():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("birdflow/cli/", BENCH)):
            continue
        tree = ast.parse(path.read_text(), rel)
        if rel in SHIMS:
            if not only_delegates(tree):
                bad.append(f"{rel}: may only delegate to birdflow.cli (import main, run it)")
        elif is_command(tree):
            bad.append(f"{rel}: a command outside birdflow/cli/; move it there")
    assert not bad, "\n".join(bad)


def test_every_shim_exists_and_the_check_sees_a_command():
    assert all((REPO / s).exists() for s in SHIMS)
    assert is_command(ast.parse("from birdflow.app import command\n@command('x', 'y')\n"
                                "def main(cfg):\n    return 1\n"))
    assert not only_delegates(ast.parse("from birdflow.cli.train import main\nx = 1\n"))
