"""birdflow as a user gets it: a wheel installed with plain ``pip install`` (not editable),
used from an unrelated empty directory, and the user guide's Python example.

The wheel goes into a fresh virtual environment with ``--no-deps``; its dependencies come from
the environment running the tests through a ``.pth`` line (installing jax and the rest again
would download ~600 MB). Only birdflow itself, its configs and resources, is the wheel's.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

# one worker runs this file's tests (they share a module fixture): CI's slow run
# distributes by test with --dist loadgroup
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, birdflow script, env, empty work dir) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
          "-w", str(root / "dist"), str(REPO)], root, env)
    wheel = next((root / "dist").glob("birdflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "birdflow/conf/train.yaml" in names and "birdflow/conf/loss/w2.yaml" in names
    assert any(n.startswith("birdflow/resources/naturalearth/") for n in names)
    assert not any(n.startswith(("conf/", "tests/")) for n in names)
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, env)
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   root, env).stdout.strip()
    deps = [p for p in (*site.getsitepackages(), sysconfig.get_paths()["purelib"]) if Path(p).is_dir()]
    Path(purelib, "zz_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], root, env)
    work = root / "empty"
    work.mkdir()
    return py, venv / "bin" / "birdflow", env, work


def test_installed_wheel_runs_every_step_from_an_empty_directory(installed):
    py, script, env, work = installed
    where = _run([str(py), "-c", "import birdflow; print(birdflow.__file__)"], work, env).stdout
    assert "site-packages" in where and str(REPO) not in where  # the wheel, not the checkout
    out = _run([str(script), "train"], work, env).stdout  # the default fit, as the issue asks
    run = Path(re.search(r"run dir: (\S+)", out).group(1))
    assert (work / run / "model.nc").exists() and (work / run / "metrics.json").exists()
    _run([str(py), "-m", "birdflow.train", "loss=w2", "optim.steps=50"], work, env)
    _run([str(script), "evaluate", f"run={run}", "w2=false"], work, env)
    _run([str(script), "routes", f"run={run}", "n=10"], work, env)
    _run([str(script), "maps", f"run={run}"], work, env)
    assert len(list((work / run / "figures").glob("*.png"))) >= 4
    printed = _run([str(py), "-c", "import birdflow as bf; m = bf.fit(optim={'steps': 50}); "
                    "print(m)"], work, env).stdout
    assert "BirdFlowModel: Synthetic flyway migrant" in printed and len(printed.splitlines()) < 8
    assert sorted(p.name for p in work.iterdir()) == ["data", "outputs"]


def test_user_guide_python_example_runs(installed):
    py, _, env, work = installed
    guide = (REPO / "docs" / "guide" / "quickstart.md").read_text()
    section = guide[guide.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 4 <= len(code.strip().splitlines()) <= 6
    check = code + "\nassert m.run_dir.exists() and metrics['n_intervals'] > 0\nprint('ok', fig)\n"
    out = _run([str(py), "-c", check], work, env).stdout
    assert out.strip().splitlines()[-1].startswith("ok Figure(")
