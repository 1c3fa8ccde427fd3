"""Faults that are not config values end in one line and exit status 2, naming the file and
the fix, with nothing half-written: a truncated model.nc, a corrupt checkpoint, a binary
tracks file, a read-only output folder, a full disk, a grid too fine for the memory, and
``resume=<dir>`` with overrides (applied when safe, refused by name otherwise).

A real run dir is trained once (a few steps of the synthetic species); each fault is made on
a copy of it and the real command is run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_bfdata, run_command

from birdflow.errors import ConfigError
from birdflow.model.markov import WeekIndex
from birdflow.runs import read_run_info
from birdflow.training.memory import check_memory

ARGS = ["progress=false", "tensorboard=false", "evaluate=false", "maps=false"]


def one_error_line(capsys, prog: str, *needles: str) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("[")]
    assert len(err) == 1, err  # (INFO log lines, "[time][logger]...", are not errors)
    assert err[0].startswith(f"birdflow {prog}: error: "), err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.part"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir, data root): 10 steps, checkpoints at 5 and 10."""
    from birdflow.cli.train import main

    root = tmp_path_factory.mktemp("faults")
    run = root / "run"
    assert run_command(main, [*ARGS, f"run_dir={run}", f"data.root={root / 'data'}",
                              "optim.steps=10", "checkpoint_every=5"]) == 0
    return run, root / "data"


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run dir for one test to break."""
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


def test_truncated_model_file(run, capsys):
    from birdflow.cli.evaluate import main

    model = run / "model.nc"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert run_command(main, [f"run={run}", "w2=false"]) == 2
    one_error_line(capsys, "evaluate", f"{model}:", "not a readable model file", "restore it")
    assert not (run / "metrics.json").exists() and not leftovers(run)


def test_corrupt_checkpoint(run, trained, capsys):
    from birdflow.cli.train import main

    info = read_run_info(run)
    with open(run / "run.json", "w") as fh:  # an interrupted run: status running, resumable
        json.dump({**info, "status": "running"}, fh)
    ckpt = sorted((run / "checkpoints").glob("step_*.npz"))[-1]
    ckpt.write_bytes(b"PK\x03\x04 not really a zip file")
    assert run_command(main, [f"resume={run}", f"data.root={trained[1]}"]) == 2
    one_error_line(capsys, "train", f"{ckpt}:", "unreadable checkpoint", "delete it")


def test_binary_tracks_file(run, tmp_path, capsys):
    from birdflow.cli.evaluate import main

    binary = tmp_path / "tracks.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    assert run_command(main, [f"run={run}", f"tracks={binary}", "w2=false"]) == 2
    one_error_line(capsys, "evaluate", f"{binary}:", "not a text CSV file", "bird_id,date,lat,lon")
    assert not list(run.glob("metrics*.json"))


# The command runs in a fresh interpreter that first limits itself, then runs ``python -m
# birdflow <args>``: READ_ONLY drops the capabilities that let root write through permission
# bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), SMALL_DISK lets no file grow past 64 kB
# (Python ignores SIGXFSZ, so a write past it fails with EFBIG, as a full disk stops a writer).
READ_ONLY = """
import ctypes, os
if os.getuid() == 0:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    head, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(head), data) == 0
    for d in data:
        d.effective &= ~0b110
        d.permitted &= ~0b110
    assert libc.capset(ctypes.byref(head), data) == 0, ctypes.get_errno()
"""
SMALL_DISK = """
import resource
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
"""
RUN = """
import runpy, sys
sys.argv = ["birdflow", *sys.argv[1:]]
runpy.run_module("birdflow", run_name="__main__")
"""


def _command(args: list[str], cwd: Path, limit: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", limit + RUN, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("[")]


def test_read_only_output_folder(run, tmp_path):
    """``routes`` into a run dir the user may not write: one line, nothing written."""
    for p in [run, *run.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        proc = _command(["routes", f"run={run}", "n=3"], tmp_path, READ_ONLY)
        err = _error_lines(proc)
        assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
        assert err[0].startswith("birdflow routes: error: ") and "cannot write there" in err[0]
        assert str(run / "routes.csv") in err[0]
        assert not (run / "routes.csv").exists() and not leftovers(run)
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755)


def test_full_disk(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _command(["export", f"run={run}", f"out={out / 'model.hdf5'}"], tmp_path, SMALL_DISK)
    err = _error_lines(proc)
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
    assert err[0].startswith("birdflow export: error: ") and "no space left" in err[0]
    assert str(out / "model.hdf5") in err[0] and "nothing half-written" in err[0]
    assert list(out.iterdir()) == []


def test_resume_applies_more_steps(run, trained):
    from birdflow.cli.train import main

    assert run_command(main, [f"resume={run}", f"data.root={trained[1]}", "optim.steps=15",
                              "progress=false"]) == 0
    info = read_run_info(run)
    assert info["status"] == "finished" and info["steps_done"] == 15
    assert len((run / "loss_history.csv").read_text().splitlines()) == 1 + 15


def test_resume_refuses_what_would_change_the_run(run, trained, capsys):
    from birdflow.cli.train import main

    before = (run / "run.json").read_bytes()
    assert run_command(main, [f"resume={run}", "loss.obs_weight=2", "species.res_km=50",
                              "evaluate=false"]) == 2
    one_error_line(capsys, "train", "loss.obs_weight=2", "species.res_km=50", "cannot change")
    assert (run / "run.json").read_bytes() == before


def test_memory_estimate_names_the_budget_and_the_alternatives():
    ds = make_tiny_bfdata(n_rows=6, n_cols=8, seed=1)
    index = WeekIndex.from_bfdata(ds)
    need = check_memory(index, 100.0, {}, 4, have=(10**12, "test"))
    assert need == 8 * 4 * index.n_transitions * index.n_max ** 2
    with pytest.raises(ConfigError) as e:
        check_memory(index, 100.0, {"max_weekly_km": 1000}, 4, have=(need // 20, "test memory"))
    msg = str(e.value)
    assert "species.res_km=100" in msg and "test memory" in msg and "\n" not in msg
    fits = float(msg.split("use species.res_km=")[1].split()[0])
    assert 200 <= fits <= 230  # (20)^(1/4) = 2.11 times coarser, rounded up to a clean value
    assert "model.neighbourhood_km" in msg


def test_a_grid_too_fine_for_memory_stops_in_one_line(tmp_path, monkeypatch, capsys):
    """``species.res_km=10`` on the synthetic species (about 270 GB dense) stops before
    anything is allocated or written, in well under a minute."""
    from birdflow.cli.train import main

    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    assert run_command(main, [*ARGS, "species.res_km=10", f"data.root={tmp_path / 'data'}"]) == 2
    assert time.perf_counter() - t0 < 60
    line = one_error_line(capsys, "train", "species.res_km=10:", "GB", "model.neighbourhood_km=")
    assert np.isfinite(float(line.split("use species.res_km=")[1].split()[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no run dir, no outputs/
