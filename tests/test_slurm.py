"""The same 4-job sweep through the local (joblib) launcher and through a real single-node SLURM
(scripts/local_slurm.sh, submitit launcher): both finish, give the same summary table up to the
timing columns, and pick a best model. The SLURM part needs root and apt (or an installed SLURM)
and skips with the reason otherwise; the fixture stops every daemon it started."""

from __future__ import annotations

import csv
import os
import random
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from test_sweep import REPO, multirun, needs_training_config

from birdflow.sweeps.summary import TIMING_COLUMNS
from birdflow.sweeps.sweep import summarize

SCRIPT = REPO / "scripts" / "local_slurm.sh"
GRID = ["loss.ent_weight=1e-4,1e-3", "loss.dist_pow=0.4,0.8"]  # 4 jobs, L2 (W2 compiles slowly)

# one worker runs this file's tests (they share a module fixture): CI's slow run
# distributes by test with --dist loadgroup
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _free_port_pair() -> int:
    """A port p with p and p+1 free on 127.0.0.1 (slurmctld, slurmd)."""
    for _ in range(50):
        p = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    unavailable("no free port pair for slurmctld/slurmd")


def must_run_slurm() -> bool:
    """In CI as root on Debian (what .ci/run provides) SLURM can be installed and started, so
    not managing to is a failure there; elsewhere the test skips with the reason."""
    return (os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0
            and Path("/etc/debian_version").exists())


def unavailable(reason: str):
    """Fail (CI, root, Debian) or skip (anywhere else) with the reason."""
    if must_run_slurm():
        pytest.fail(f"CI=true on Debian as root, but {reason}")
    pytest.skip(reason)


def _script(cmd: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), cmd], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM on localhost; yields the environment that reaches it."""
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd/munged needs root")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        unavailable("SLURM is not installed and there is no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "BIRDFLOW_SLURM_DIR": str(state), "BIRDFLOW_SLURM_PORT": str(_free_port_pair())}
    p = _script("install", env, timeout=600)
    if p.returncode != 0:
        unavailable(f"cannot install SLURM: {(p.stderr or p.stdout).strip()[-500:]}")
    try:
        p = _script("start", env, timeout=120)
        if p.returncode != 0:
            unavailable(f"cannot start SLURM: {(p.stderr or p.stdout).strip()[-800:]}")
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        stop = _script("stop", env, timeout=60)
        assert stop.returncode == 0, stop.stderr
        for name in ("slurmctld", "slurmd", "munged"):  # every daemon we started is gone
            assert not (state / f"{name}.pid").exists()


def test_slurm_unavailable_fails_in_ci_and_skips_elsewhere(monkeypatch):
    """The rule itself (no SLURM needed): CI + root + Debian turns the skip into a failure."""
    debian = Path("/etc/debian_version").exists()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(pytest.fail.Exception if debian else pytest.skip.Exception,
                       match="cannot start SLURM: boom"):
        unavailable("cannot start SLURM: boom")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception):
        unavailable("cannot start SLURM: boom")
    monkeypatch.setenv("CI", "false")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(pytest.skip.Exception):
        unavailable("cannot start SLURM: boom")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, data_root):
    needs_training_config()
    sweep = tmp_path_factory.mktemp("local") / "sweep"
    multirun(data_root, sweep, *GRID, "hydra/launcher=local", "hydra.launcher.n_jobs=2")
    return sweep


def table(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_four_finished_and_a_best_model(sweep: Path) -> None:
    rows, best = summarize(sweep, threshold=0.0, plots=False)
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows), rows
    assert {r["dist_pow"] for r in rows} == {0.4, 0.8} and {r["ent_weight"] for r in rows} == {1e-4, 1e-3}
    assert all("min_distr_cor" in r and "weighted_mean_ll" in r for r in rows)  # evaluated
    chosen = {b["criterion"]: b["run"] for b in best}
    assert chosen["best_ll"] in {r["run"] for r in rows} and chosen["best_mean_ll"]


def test_local_launcher_sweep(local_sweep):
    assert_four_finished_and_a_best_model(local_sweep)


def test_slurm_sweep_matches_local(slurm, local_sweep, data_root, tmp_path):
    sweep = tmp_path / "sweep"
    # submitit calls sbatch/squeue with this environment; the jobs inherit it (sbatch --export=ALL)
    multirun(data_root, sweep, *GRID, "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null",
             "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
             "hydra.launcher.timeout_min=10", env=slurm)
    assert len(list((sweep / ".submitit").iterdir())) >= 1  # it went through sbatch
    assert_four_finished_and_a_best_model(sweep)
    slurm_rows, local_rows = table(sweep), table(local_sweep)
    for s, lo in zip(slurm_rows, local_rows, strict=True):
        for col in set(s) - set(TIMING_COLUMNS):
            a, b = s[col], lo[col]
            try:
                assert float(a) == pytest.approx(float(b), rel=1e-6, abs=1e-9), (s["run"], col)
            except ValueError:
                assert a == b, (s["run"], col)
