"""The run directory (birdflow.runs): paths that survive a move, one metrics file per tracks
source, a saved config without environment values, and the lock against a second training.

The end-to-end tests run the real commands: training in a subprocess from one working
directory, the run dir moved, then evaluate/routes/maps/export from a third directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_command
from omegaconf import OmegaConf

from birdflow.runs import (
    locked,
    metrics_file,
    read_config,
    read_run_info,
    run_path,
    write_config,
    write_run_info,
)

TRAIN = [sys.executable, "-m", "birdflow.train", "progress=false", "tensorboard=false",
         "evaluate=false", "maps=false"]


def test_paths_are_stored_relative_inside_the_run_dir_and_absolute_outside(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "inputs").mkdir()
    (run / "inputs" / "tracks.csv").write_text("bird_id,date,lat,lon\n")
    monkeypatch.chdir(tmp_path)
    info = write_run_info(Path("runs/r"), tracks="runs/r/inputs/tracks.csv",
                          data_path="data/x.nc", tuned_by=tmp_path / "runs")
    assert info["tracks"] == "inputs/tracks.csv"           # inside: relative to the run dir
    assert info["data_path"] == str(tmp_path / "data/x.nc")  # outside: absolute
    assert info["tuned_by"] == ".."                          # a folder holding the run
    moved = tmp_path / "elsewhere" / "r"
    shutil.move(str(run), moved)
    monkeypatch.chdir("/")
    assert run_path(moved, "tracks") == moved / "inputs" / "tracks.csv"
    assert run_path(moved, "tracks").exists() and run_path(moved, "truth") is None


def test_saved_config_keeps_environment_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDFLOW_TEST_SECRET", "s3cret")
    cfg = OmegaConf.create({"key": "${oc.env:BIRDFLOW_TEST_SECRET}", "n": 3, "m": "${n}"})
    write_config(tmp_path, cfg)
    text = (tmp_path / "config.yaml").read_text()
    assert "s3cret" not in text and "${oc.env:BIRDFLOW_TEST_SECRET}" in text
    assert read_config(tmp_path).m == 3


def test_one_metrics_file_per_tracks_source(tmp_path):
    (tmp_path / "inputs").mkdir()
    own = tmp_path / "inputs" / "tracks.csv"
    own.write_text("x\n")
    write_run_info(tmp_path, tracks=own)
    other = tmp_path / "banding birds é.csv"
    other.write_text("x\n")
    assert metrics_file(tmp_path).name == "metrics.json"
    assert metrics_file(tmp_path, own).name == "metrics.json"
    assert metrics_file(tmp_path, other).name == "metrics_banding_birds.json"


def _train(cwd: Path, run_dir: str, data_root: Path, *extra: str, **kw):
    return subprocess.run([*TRAIN, f"run_dir={run_dir}", f"data.root={data_root}", *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One data root for this module's trainings (the synthetic species is generated once)."""
    return tmp_path_factory.mktemp("data")


def test_lock_is_released_when_its_holder_exits(tmp_path):
    with locked(tmp_path):
        pass
    code = ("import sys; from birdflow.runs import locked\n"
            f"with locked({str(tmp_path)!r}): sys.exit(0)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.slow  # two trainings and a third command in processes of their own: ~25 s here
def test_second_training_into_a_locked_run_dir_exits_2_in_one_line(tmp_path, data_root,
                                                                    monkeypatch, capsys):
    """A real second process: training A holds the run dir; B (resume=<dir>, which skips the
    fresh-run check) stops in one line with status 2 and records no failure in A's run.json."""
    run, data = tmp_path / "run", data_root
    (tmp_path / "a").mkdir()  # A's own working directory (a killed A leaves Hydra's folder)
    a = subprocess.Popen([*TRAIN, f"run_dir={run}", f"data.root={data}", "optim.steps=1000000",
                          "checkpoint_every=1000000"], cwd=tmp_path / "a", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((run / ".lock").exists() and (run / ".lock").read_text().strip()):
            assert a.poll() is None, a.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "training A never took the lock"
            time.sleep(0.5)
        b = subprocess.run([*TRAIN[:3], f"resume={run}"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        err = b.stderr.strip().splitlines()
        assert b.returncode == 2, b.stderr[-3000:]
        assert len(err) == 1 and err[0].startswith("birdflow train: error: "), err
        assert "in use by training pid" in err[0] and str(a.pid) in err[0]
        # B wrote nothing into A's run.json: no failure recorded (A itself may still be adding
        # its own fields while it sets up, so the file is not compared byte for byte)
        info = read_run_info(run)
        assert info["status"] == "running" and "error" not in info and "failed_at" not in info
        assert a.poll() is None
        from birdflow.cli.train import main as train  # C: a new run into it, in this process

        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        assert run_command(train, [*TRAIN[3:], f"run_dir={run}", f"data.root={data}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(run) in err[0], err
    finally:
        a.kill()
        a.wait()
    assert read_run_info(run)["status"] == "running"  # a killed run: resumable
    assert sorted(os.listdir(tmp_path)) == ["a", "run"]  # B, C: no stray Hydra folders


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory, data_root):
    """A run trained from directory a/ (relative run_dir), then moved to b/ with its data
    root renamed: only what the run dir carries is left."""
    root = tmp_path_factory.mktemp("moved")
    (root / "a").mkdir()
    proc = _train(root / "a", "run", data_root, "optim.steps=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "b").mkdir()
    shutil.move(str(root / "a" / "run"), root / "b" / "moved run é")
    shutil.rmtree(root / "a")
    hidden = data_root.with_name(data_root.name + "_hidden")
    data_root.rename(hidden)
    (root / "c").mkdir()
    return root / "b" / "moved run é", root / "c"  # (the lock test above ran first)


def test_a_moved_run_works_from_a_third_directory(moved_run, monkeypatch, capsys):
    from birdflow.cli.evaluate import main as evaluate
    from birdflow.cli.export import main as export
    from birdflow.cli.maps import main as maps
    from birdflow.cli.routes import main as routes

    run, third = moved_run
    monkeypatch.chdir(third)
    assert run_command(evaluate, [f"run={run}", "w2=false", "win_prob=false"]) == 0
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["n_intervals"] > 0 and summary["truth_transition_tv"] is not None
    assert run_command(routes, [f"run={run}", "n=5"]) == 0
    assert (run / "routes.csv").exists()
    assert run_command(maps, [f"run={run}", "n_routes=3", "dpi=40"]) == 0
    assert len(list((run / "figures").glob("*.png"))) >= 4
    assert run_command(export, [f"run={run}", f"out={third}/model.hdf5"]) == 0
    assert (third / "model.hdf5").stat().st_size > 0
    assert sorted(p.name for p in third.iterdir()) == ["model.hdf5"]  # no stray folders


def test_evaluate_on_other_tracks_leaves_metrics_json_alone(moved_run, monkeypatch, capsys):
    from birdflow.cli.evaluate import main as evaluate

    run, third = moved_run
    monkeypatch.chdir(third)
    if not (run / "metrics.json").exists():
        assert run_command(evaluate, [f"run={run}", "w2=false", "win_prob=false"]) == 0
    before = (run / "metrics.json").read_bytes()
    other = third / "other birds.csv"
    other.write_text((run / "inputs" / "tracks.csv").read_text())
    assert run_command(evaluate, [f"run={run}", f"tracks={other}", "w2=false",
                                  "win_prob=false"]) == 0
    assert (run / "metrics.json").read_bytes() == before
    assert json.loads((run / "metrics_other_birds.json").read_text())["summary"]["n_intervals"] > 0
    junk = third / "junk.csv"
    junk.write_text("bird_id,date,lat,lon\nb1,not a date,x,y\n")
    capsys.readouterr()
    assert run_command(evaluate, [f"run={run}", f"tracks={junk}", "w2=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.csv" in err[0] and "nothing written" in err[0], err
    assert "unparsable date" in err[0]
    assert not (run / "metrics_junk.json").exists()
    assert (run / "metrics.json").read_bytes() == before
