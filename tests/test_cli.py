"""Every entry point speaks one grammar and fails one way: a table over all commands.

Each command runs in-process through its ``main(argv)`` (the ``birdflow <command>`` dispatcher
calls the same function; one subprocess per grammar checks the dispatcher itself). A user error
must print exactly one line, ``birdflow <command>: error: ...`` naming the key or file, and exit
with status 2.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import run_command

from birdflow.cli.main import COMMANDS

# command -> (module, a key its --help lists, a numeric key, [args that need a missing file])
MISSING = "/nonexistent/birdflow-test"
TABLE = {
    "train": ("birdflow.cli.train", "optim", "optim.steps", [f"species.raster={MISSING}.tif"]),
    "evaluate": ("birdflow.cli.evaluate", "tracks", "min_days", [f"run={MISSING}"]),
    "routes": ("birdflow.cli.routes", "start_week", "n", [f"run={MISSING}"]),
    "maps": ("birdflow.cli.maps", "n_routes", "dpi", [f"run={MISSING}"]),
    "compare": ("birdflow.cli.compare", "n_routes", "n_routes",
                [f"runs.l2={MISSING}", f"runs.w2={MISSING}"]),
    "export": ("birdflow.cli.export", "hdf5", None, [f"hdf5={MISSING}.hdf5", "out=x"]),
    "sweep": ("birdflow.cli.sweep", "threshold", "threshold", ["summarize", f"dir={MISSING}"]),
    "preprocess": ("birdflow.cli.preprocess", "species", "species.res_km",
                   [f"species.raster={MISSING}.tif"]),
    "download": ("birdflow.cli.download", "species", "species.version_year",
                 ["species=barswa", f"data.root={MISSING}"]),
    "synthetic": ("birdflow.cli.synthetic", "species", "species.synthetic.size", None),
    "sparsify": ("birdflow.cli.sparsify", "p_protected", "p", [f"run={MISSING}"]),
    "tune": ("birdflow.cli.tune", "tune", "tune.steps", [f"tracks={MISSING}.csv"]),
    "validate": ("birdflow.cli.validate", "season", "n_routes", [f"run={MISSING}"]),
    "batch": ("birdflow.cli.batch", "batch", "optim.steps", None),
    "catalog": ("birdflow.cli.catalog", "dir", None, [f"dir={MISSING}"]),
    "transfer": ("birdflow.cli.transfer", "transfer", "transfer.ridge",
                 [f"transfer.species=[{MISSING},b,c]"]),
}
NEEDS_RUN = {"evaluate", "routes", "maps", "sparsify", "validate"}


def _main(name):
    return importlib.import_module(TABLE[name][0]).main


def _one_error_line(capsys, name: str, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"birdflow {name}: error: "), err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def test_the_table_covers_every_command():
    assert set(COMMANDS) - {"bench"} == set(TABLE)  # bench has flags: its own test below


@pytest.mark.parametrize("name", sorted(TABLE))
def test_help_lists_the_options(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_command(_main(name), ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"birdflow {name} ") and "== Options (key: default) ==" in out
    assert f"{TABLE[name][1]}:" in out and not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", sorted(TABLE))
def test_unknown_key_is_one_line_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["summarize"] if name == "sweep" else []
    assert run_command(_main(name), [*args, "colour=red"]) == 2
    _one_error_line(capsys, name, "colour=red", "unknown key", "+colour=")


@pytest.mark.parametrize("name", sorted(n for n in TABLE if TABLE[n][2]))
def test_word_where_a_number_belongs_is_one_line_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = TABLE[name][2]
    args = ["summarize"] if name == "sweep" else []
    assert run_command(_main(name), [*args, f"{key}=abc"]) == 2
    _one_error_line(capsys, name, f"{key}='abc'", "must be a number")


@pytest.mark.parametrize("name", sorted(n for n in TABLE if TABLE[n][3]))
def test_missing_file_is_one_line_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EBIRDST_KEY", raising=False)
    args = TABLE[name][3]
    assert run_command(_main(name), args) == 2
    line = _one_error_line(capsys, name, "/nonexistent/birdflow-test")
    print(line)


@pytest.mark.parametrize("name", sorted(NEEDS_RUN))
def test_missing_run_is_one_line_exit_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_command(_main(name), []) == 2
    _one_error_line(capsys, name, "run: missing", "run=")


def test_export_needs_exactly_one_of_run_and_hdf5(capsys):
    assert run_command(_main("export"), []) == 2
    _one_error_line(capsys, "export", "exactly one of run=")


def test_malformed_override_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_command(_main("routes"), ["run=x", "n=[1,"]) == 2
    _one_error_line(capsys, "routes")


def test_bench_flags_fail_the_same_way(capsys):
    from birdflow.bench.core import main

    assert run_command(main, ["--cells", "abc"]) == 2
    _one_error_line(capsys, "bench", "--cells", "invalid int value")
    assert run_command(main, ["--colour", "red"]) == 2
    _one_error_line(capsys, "bench", "--colour")


def test_dispatcher_runs_the_same_commands():
    """``python -m birdflow <command>`` (the ``birdflow`` script) reaches each command."""
    proc = subprocess.run([sys.executable, "-m", "birdflow", "routes", "n=abc", "run=x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "birdflow routes: error: n='abc': must be a number (the default is 100)"]
    proc = subprocess.run([sys.executable, "-m", "birdflow", "fly"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown command 'fly'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "birdflow", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and all(c in proc.stdout for c in COMMANDS)


def test_null_typed_values_and_plus_keys_reach_the_config():
    from birdflow.app import compose

    cfg = compose("evaluate", ["run=r", "tracks=null", "+note=hello", "min_days=3",
                               "week_range=[10,20]"])
    assert cfg.tracks is None and cfg.note == "hello" and cfg.min_days == 3
    assert isinstance(cfg.min_days, float) and list(cfg.week_range) == [10, 20]  # schema-typed
    cfg = compose("train", ["loss=w2", "optim.steps=50", "loss.w2.epsilon_cells=2.5"])
    assert cfg.loss.location == "w2" and cfg.optim.steps == 50 and "hydra" not in cfg


@pytest.mark.parametrize("name, override, key", [
    ("train", "optim.learning_rate=inf", "optim.learning_rate"),
    ("evaluate", "w2_epsilon=-1", "w2_epsilon"),
    ("evaluate", "max_days=-3", "max_days"),
    ("routes", "weeks=0", "weeks"),
])
def test_out_of_range_numbers_are_one_line(name, override, key, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [override] if name == "train" else [f"run={tmp_path}", override]
    assert run_command(_main(name), [*args, f"data.root={MISSING}"] if name == "train"
                       else args) == 2
    _one_error_line(capsys, name, f"{key}=")
    assert not list(tmp_path.iterdir())  # nothing written, no run dir


def test_paths_with_spaces_and_accents_need_no_quoting(capsys, tmp_path, monkeypatch):
    """Hydra's grammar rejects unquoted accented letters; the commands quote such a value."""
    monkeypatch.chdir(tmp_path)
    assert run_command(_main("evaluate"), [f"run={MISSING}/Grive à dos é"]) == 2
    _one_error_line(capsys, "evaluate", f"{MISSING}/Grive à dos é/model.nc", "no fitted model")
