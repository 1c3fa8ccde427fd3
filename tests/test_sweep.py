"""Sweeps: the de_ratio/obs_prop parameterisation, the summary table and model selection on
fabricated run dirs, the experiment/launcher configs, and real local multiruns (slow)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_command
from omegaconf import OmegaConf
from PIL import Image

from birdflow.cli.sweep import main
from birdflow.errors import ConfigError, DataError
from birdflow.runs import read_run_info
from birdflow.sweeps.selection import best_models, desirability
from birdflow.sweeps.summary import _expected_jobs, collect
from birdflow.sweeps.sweep import (
    RunDirTaken,
    SweepGuard,
    apply_hyper,
    check_fresh_run_dir,
    job_failure,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]


def needs_training_config():
    """Skip until the loss configs (another module) are in the tree."""
    pytest.importorskip("birdflow.losses.objective")
    if not (REPO / "conf" / "loss" / "l2.yaml").exists():
        pytest.skip("conf/loss/l2.yaml not written yet")


# ---------------------------------------------------------------- de_ratio / obs_prop


def test_apply_hyper_matches_the_reference_model_name():
    # birdflow_reference.md §3.8: the shipped sstspa model (de_ratio 10, obs_prop 0.95, pow 0.9)
    # is the file "sstspa_2023_100km_obs1.0_ent0.0047847_dist0.047847_pow0.9.hdf5".
    cfg = OmegaConf.create({"loss": {"obs_weight": 1.0, "dist_weight": 0.01, "ent_weight": 1e-4},
                            "hyper": {"de_ratio": 10, "obs_prop": 0.95}})
    loss = apply_hyper(cfg)
    assert loss.ent_weight == 0.0047847 and loss.dist_weight == 0.047847
    assert cfg.loss.dist_weight == 0.047847  # updated in place: config.yaml shows what was used


@pytest.mark.parametrize("de, op", [(2, 0.95), (4, 0.975), (6, 0.99), (8, 0.999), (10, 0.9999)])
def test_apply_hyper_inverts_to_the_grid_values(de, op):
    loss = apply_hyper({"loss": {"obs_weight": 1.0}, "hyper": {"de_ratio": de, "obs_prop": op}})
    d, e = loss["dist_weight"], loss["ent_weight"]
    assert d / e == pytest.approx(de, rel=1e-4)  # 5 significant digits each
    assert 1 / (1 + d + e) == pytest.approx(op, rel=1e-6)


def test_apply_hyper_without_hyper_returns_loss_unchanged():
    loss = {"obs_weight": 1.0, "dist_weight": 0.01, "ent_weight": 1e-4}
    assert apply_hyper({"loss": loss}) is loss
    assert apply_hyper({"loss": loss, "hyper": {"de_ratio": None, "obs_prop": None}}) is loss


@pytest.mark.parametrize("hyper, key", [({"de_ratio": 4, "obs_prop": None}, "hyper.obs_prop"),
                                        ({"de_ratio": 4, "obs_prop": 1.0}, "hyper.obs_prop"),
                                        ({"de_ratio": -1, "obs_prop": 0.9}, "hyper.de_ratio")])
def test_apply_hyper_rejects_bad_values(hyper, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_hyper({"loss": {}, "hyper": hyper})


# ---------------------------------------------------------------- failures and run-dir guard


def test_job_failure_leaves_no_run_dir_for_a_rejected_single_run(tmp_path):
    """A single run rejected before training wrote anything leaves no (failed) run dir; a
    run that started records its own failure (tests/test_train.py)."""
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "r"), "resume": None,
                            "debug": {"raise_after_step": None}})
    err = ConfigError("loss.w2.epsilon=0: must be > 0")
    assert job_failure(cfg, err) is err  # re-raised; the command turns it into one line, exit 2
    assert not (tmp_path / "r").exists()
    other = ValueError("boom")
    assert job_failure(cfg, other) is other  # not ours: re-raised as it is


def test_check_fresh_run_dir_refuses_an_existing_run(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"status": "finished"}))
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "resume": None, "debug": {}})
    with pytest.raises(RunDirTaken, match="resume=true"):
        check_fresh_run_dir(cfg)
    taken = RunDirTaken("taken")
    assert job_failure(cfg, taken) is taken and read_run_info(tmp_path)["status"] == "finished"
    cfg.resume = True
    check_fresh_run_dir(cfg)  # resuming the same dir is the way to re-run a sweep


def test_sweep_guard_needs_resume_for_an_existing_sweep(tmp_path):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "resume": None})
    SweepGuard().on_multirun_start(config=cfg)  # a new sweep dir: fine
    (tmp_path / "multirun.yaml").write_text("{}\n")
    with pytest.raises(SystemExit, match="already holds a sweep; add resume=true"):
        SweepGuard().on_multirun_start(config=cfg)
    cfg.resume = True
    SweepGuard().on_multirun_start(config=cfg)
    SweepGuard().on_job_end(config=cfg, job_return=None)  # the other hooks do nothing


# ---------------------------------------------------------------- summary on fabricated runs


def fake_run(sweep: Path, name: str, status: str, loss: str, ent: float, metrics: dict | None,
             overrides: list[str], species: str = "synthetic", runtime: float = 3.0) -> Path:
    """A run dir as birdflow.training.loop + evaluate leave it (run.json, config.yaml, metrics.json)."""
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    cfg = {"species": {"code": species}, "loss": {"location": loss, "obs_weight": 1.0,
           "dist_weight": 0.01, "ent_weight": ent, "dist_pow": 0.4},
           "optim": {"learning_rate": 0.1, "steps": 20}}
    (d / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    info = {"species": species, "loss": loss, "status": status, "steps_done": 20, "runtime_s": runtime}
    if status == "failed":
        info["error"] = "RuntimeError: job interrupted by debug.raise_after_step=3\nmore"
    (d / "run.json").write_text(json.dumps(info))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps({"summary": metrics, "per_week": {}}))
    return d


def m(cor, wll, ll, win, year_cor=None):
    """Fake metrics; ``cor`` is the pipeline's two-season min_dist_cor (whole year: year_cor)."""
    return {"min_dist_cor": cor, "min_distr_cor": cor if year_cor is None else year_cor,
            "weighted_mean_ll": wll, "mean_ll": ll,
            "weighted_mean_win_distance_fraction": win, "mean_tv": 0.1}


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    jobs = [["loss=l2", "loss.ent_weight=0.0001"], ["loss=l2", "loss.ent_weight=0.001"],
            ["loss=w2", "loss.ent_weight=0.0001"], ["loss=w2", "loss.ent_weight=0.001"],
            ["loss=w2", "loss.ent_weight=0.01"]]
    fake_run(s, "0_synthetic_l2", "finished", "l2", 1e-4, m(0.95, -3.0, -2.5, 0.80), jobs[0])
    # the highest weighted ll and mean_ll, but below the correlation threshold
    fake_run(s, "1_synthetic_l2", "finished", "l2", 1e-3, m(0.85, -1.0, -1.5, 0.90), jobs[1])
    fake_run(s, "2_synthetic_w2", "finished", "w2", 1e-4, m(0.97, -2.0, -2.6, 0.70), jobs[2])
    fake_run(s, "3_synthetic_w2", "failed", "w2", 1e-3, None, jobs[3])
    # job 4 never started: multirun.yaml expects it but it left no directory
    (s / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": {
        "sweeper": {"params": None},
        "overrides": {"task": ["loss=l2,w2", "loss.ent_weight=0.0001,0.001,0.01"]}}})))
    return s


def test_expected_jobs_follow_hydra_basic_sweeper_order(sweep):
    jobs = _expected_jobs(sweep)
    assert len(jobs) == 6 and jobs[0] == ["loss=l2", "loss.ent_weight=0.0001"]
    assert jobs[4] == ["loss=w2", "loss.ent_weight=0.001"]


def test_collect_reports_every_status(sweep):
    rows = collect(sweep)
    by_run = {r["run"]: r for r in rows}
    assert [by_run[f"{i}_synthetic_{x}"]["status"] for i, x in enumerate("l2 l2 w2 w2".split())] == [
        "finished", "finished", "finished", "failed"]
    missing = [r for r in rows if r["status"] == "missing"]
    assert {r["overrides"] for r in missing} == {"loss=l2 loss.ent_weight=0.01",
                                                 "loss=w2 loss.ent_weight=0.01"}
    r0 = by_run["0_synthetic_l2"]
    assert r0["ent_weight"] == 1e-4 and r0["de_ratio"] == 100.0  # dist/ent, 3 significant digits
    assert r0["obs_prop"] == pytest.approx(1 / 1.0101, abs=1e-4) and r0["weighted_mean_ll"] == -3.0
    assert by_run["3_synthetic_w2"]["error"] == "RuntimeError: job interrupted by debug.raise_after_step=3"


def test_summarize_writes_tables_best_models_and_plots(sweep, capsys):
    assert run_command(main, ["summarize", f"dir={sweep}"]) == 0
    out = capsys.readouterr().out
    assert "3 finished, 1 failed, 0 running, 2 missing" in out
    with open(sweep / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and table[0]["run"] == "0_synthetic_l2" and table[0]["runtime_s"] == "3"
    assert "| 2_synthetic_w2 |" in (sweep / "summary.md").read_text()
    with open(sweep / "best_models.csv", newline="") as fh:
        best = {r["criterion"]: r for r in csv.DictReader(fh)}
    assert best["best_ll"]["run"] == "2_synthetic_w2"  # run 1 has a higher ll but cor 0.85 < 0.9
    assert best["best_dg"]["run"] == "0_synthetic_l2"
    assert best["best_mean_ll"]["run"] == "1_synthetic_l2"  # no correlation filter
    png = sweep / "plots" / "weighted_mean_ll.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert (sweep / "plots" / "min_distr_cor.png").exists()


def test_desirability_is_the_geometric_mean_of_rescaled_metrics():
    rows = [{"a": 0.0, "b": 10.0}, {"a": 1.0, "b": 30.0}, {"a": 0.5, "b": 20.0}, {"a": 0.5}]
    d = desirability(rows, ["a", "b"])
    # by hand: d_a = (0, 1, .5), d_b = (0, 1, .5) -> geometric means 0, 1, .5; row 3 lacks b
    assert d[:3] == pytest.approx([0.0, 1.0, 0.5]) and d[3] is None


def test_best_mo_and_threshold(sweep):
    rows = collect(sweep)
    best = {b["criterion"]: b for b in best_models(rows)}
    # desirabilities over the 3 finished runs (cor .95/.85/.97, win .8/.9/.7, wll -3/-1/-2):
    # run0 = (5/6 · 1/2 · 0)^(1/3) = 0, run2 = (1 · 0 · 1/2)^(1/3) = 0 -> tie, first in table order
    assert best["best_mo"]["run"] == "0_synthetic_l2" and best["best_mo"]["value"] == 0.0
    none = best_models(rows, threshold=0.99)
    assert none[0]["run"] == "" and "lower --threshold" in none[0]["note"]
    lower = {b["criterion"]: b for b in best_models(rows, threshold=0.8)}
    assert lower["best_ll"]["run"] == "1_synthetic_l2"
    assert lower["best_mo"]["value"] == pytest.approx(0.0)  # run1 has the lowest correlation
    assert math.isfinite(lower["best_dg"]["value"])


def test_pipeline_rule_filters_on_the_two_season_correlation():
    """A model fine over the whole year (0.97) but poor in migration (0.85) passes the
    whole-year rule and fails BirdFlowPipeline's (min_dist_cor, the two-migration mean)."""
    rows = [{"run": "a", "species": "x", "status": "finished", **m(0.85, -1.0, -1.0, 0.5, 0.97)},
            {"run": "b", "species": "x", "status": "finished", **m(0.95, -2.0, -2.0, 0.4, 0.95)}]
    pipeline = {b["criterion"]: b for b in best_models(rows)}
    whole_year = {b["criterion"]: b for b in best_models(rows, cor_metric="min_distr_cor")}
    assert pipeline["best_ll"]["run"] == "b" and "min_dist_cor > 0.9" in pipeline["best_ll"]["note"]
    assert whole_year["best_ll"]["run"] == "a"
    bare = [{k: v for k, v in r.items() if k != "min_dist_cor"} for r in rows]
    note = best_models(bare)[0]["note"]
    assert "no finished model has min_dist_cor" in note and "min_distr_cor" in note


def test_summarize_errors_name_the_problem(tmp_path, capsys):
    assert run_command(main, ["summarize", f"dir={tmp_path / 'nope'}"]) == 2
    assert "no such sweep directory" in capsys.readouterr().err
    with pytest.raises(DataError, match="no run directories"):
        summarize(tmp_path)
    d = fake_run(tmp_path, "0_x", "finished", "l2", 1e-4, {}, [])
    (d / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json: not valid JSON"):
        collect(tmp_path)


# ---------------------------------------------------------------- configs


def compose_multirun(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import birdflow.training.loop  # noqa: F401 - registers what the training config needs

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_birdflow_grid_is_the_225_fit_pipeline_grid(tmp_path):
    needs_training_config()
    cfg = compose_multirun(["experiment=birdflow_grid"])
    params = cfg.hydra.sweeper.params
    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(
        {"hydra": {"sweeper": {"params": dict(params)}, "overrides": {"task": []}}})))
    jobs = _expected_jobs(tmp_path)
    assert len(jobs) == 225 and jobs[0] == ["hyper.de_ratio=2", "hyper.obs_prop=0.95",
                                           "loss.dist_pow=0.1"]
    from birdflow.training.settings import validate_train_config

    job = compose_multirun(["experiment=birdflow_grid", *jobs[-1]])
    loss, _ = validate_train_config(job)
    # last job: de 10, op 0.9999 -> ent = 1e-4 / (0.9999 * 11) = 9.0918e-06 (5 significant digits)
    assert (loss.dist_weight, loss.ent_weight, loss.dist_pow) == (9.0918e-05, 9.0918e-06, 0.9)


def test_l2_vs_w2_and_launcher_configs():
    needs_training_config()
    cfg = compose_multirun(["experiment=l2_vs_w2", "hydra/launcher=slurm",
                            "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=5"])
    assert dict(cfg.hydra.sweeper.params) == {"loss": "l2,w2", "loss.ent_weight": "1e-4,1e-3,1e-2"}
    la = cfg.hydra.launcher
    assert la._target_.endswith("SlurmLauncher") and (la.partition, la.timeout_min) == ("gpu", 5)
    assert la.gpus_per_node == 1 and any("EBIRDST_KEY" in line for line in la.setup)
    assert "${" not in " ".join(la.setup)  # the key is never interpolated into the job script
    local = compose_multirun(["hydra/launcher=local", "hydra.launcher.n_jobs=3"])
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 3
    # a timestamp to the microsecond: two sweeps started in the same second do not share a folder
    assert re.fullmatch(r"outputs/sweeps/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", local.hydra.sweep.dir)
    assert local.hydra.callbacks.sweep_guard._target_ == "birdflow.sweeps.sweep.SweepGuard"


# ---------------------------------------------------------------- real multiruns (local launcher)


# a tiny synthetic species (59 cells at 300 km) and few steps: a job takes ~10 s of CPU
TINY = ["species=synthetic", "species.res_km=300", "species.synthetic.n_tracks=20", "optim.steps=20",
        "checkpoint_every=10", "progress=false", "tensorboard=false", "maps=false"]


def multirun(data_root: Path, sweep_dir: Path, *overrides: str, check: bool = True,
             env: dict | None = None):
    """``python -m birdflow.train -m ...`` (real Hydra multirun); data and outputs under tmp."""
    cmd = [sys.executable, "-m", "birdflow.train", "-m", *TINY,
           f"data.root={data_root}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    env = {**(env or os.environ), "JAX_PLATFORMS": "cpu", "HYDRA_FULL_ERROR": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"multirun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.mark.slow
def test_failed_job_is_reported_and_resume_skips_finished(tmp_path):
    needs_training_config()
    s = tmp_path / "sweep"
    p = multirun(tmp_path / "data", s, "debug.raise_after_step=null,3", check=False)
    assert p.returncode != 0  # Hydra re-raises the failed job's error after the others ran
    rows, best = summarize(s, plots=False)
    assert [r["status"] for r in rows] == ["finished", "failed"]
    assert "debug.raise_after_step=3" in rows[1]["error"]
    assert best and best[-1]["run"] == "0_synthetic_l2"  # best_mean_ll among the finished
    finished_model = s / "0_synthetic_l2" / "run.json"
    before = finished_model.read_text()
    # re-run the same sweep dir: the finished run is skipped, the failed one trains again
    multirun(tmp_path / "data", s, "debug.raise_after_step=null,1000", "resume=true")
    assert finished_model.read_text() == before
    rows, _ = summarize(s, plots=False)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    # without resume=true a sweep refuses to write into another's run dirs
    p = multirun(tmp_path / "data", s, "seed=1,2", check=False)
    assert p.returncode != 0 and "already holds a sweep" in p.stderr + p.stdout
    assert finished_model.read_text() == before


def test_expected_jobs_write_fixed_values_as_hydra_writes_overrides_yaml(tmp_path):
    """A fixed ``progress=false`` beside a sweep reads ``progress=False`` in each job's
    overrides.yaml (Hydra's basic sweeper formats values that way); the expected jobs must
    match it, or finished jobs would be listed again as missing."""
    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": {
        "sweeper": {"params": None},
        "overrides": {"task": ["progress=false", "optim.steps=20", "seed=1,2", "+note=x"]}}})))
    assert _expected_jobs(tmp_path) == [
        ["progress=False", "optim.steps=20", "seed=1", "+note=x"],
        ["progress=False", "optim.steps=20", "seed=2", "+note=x"]]
