"""L2 vs W2 comparison report on the synthetic species (end to end, tiny)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from birdflow.evaluation.compare import compare, metrics_table


@pytest.mark.slow
def test_compare_report_scores_synthetic_tracks_for_both_models(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("compare", overrides=[
            f"data.root={tmp_path / 'data'}", "species.synthetic.size=0.5", "species.synthetic.n_tracks=40",
            "optim.steps=40", "progress=false", "tensorboard=false", "n_routes=10",
            # BirdFlowPy's objective and weights, shared by both losses, and a sharp blur (0.3
            # one-cell costs): with the κ-scaled L2 defaults, or with the default blur of 2
            # one-cell costs on this ~6-cell range, the L2 model fits best in W2 after 40 steps
            # (measured 33.8 vs 21.0 km at the default blur)
            "loss.l2_norm=plain", "loss.dist_weight=0.01", "loss.ent_weight=1e-4",
            "loss.dist_pow=0.4", "+w2.epsilon_cells=0.3"])
    report = compare(cfg, tmp_path / "report")
    text = report.read_text()
    assert "| metric | l2 | w2 | better |" in text and "mean_ll" in text
    for name in ("distributions_l2.png", "distributions_w2.png", "routes_l2.png", "routes_w2.png",
                 "fit_per_week_tv.png", "loss_w2.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000, name
        assert f"({name})" in text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for loss in ("l2", "w2"):
        m = metrics[loss]
        assert m["n_intervals"] > 0 and m["mean_ll"] is not None
        assert m["truth_transition_tv"] is not None and m["truth_mean_ll"] is not None
    # quality: the model trained on W2 fits the S&T maps better in W2 (km) than the L2 one,
    # and both beat nothing: the L2 model has the lower L2 error it was trained on
    assert metrics["w2"]["mean_w2"] < metrics["l2"]["mean_w2"]
    assert metrics["l2"]["mean_l2"] < metrics["w2"]["mean_l2"]
    # reusing the finished runs gives the same table
    again = compare(cfg, tmp_path / "report")
    assert again.read_text() == text


def test_metrics_table_picks_winners_by_direction():
    results = {"l2": {"summary": {"mean_tv": 0.2, "mean_ll": -3.0, "n_cells": 5}},
               "w2": {"summary": {"mean_tv": 0.1, "mean_ll": -4.0, "n_cells": 5}}}
    table, wins = metrics_table(results)
    assert "| mean_tv | 0.2 | 0.1 | **w2** (lower) |" in table
    assert "| mean_ll | -3 | -4 | **l2** (higher) |" in table
    assert "| n_cells | 5 | 5 |  |" in table
    assert wins == {"l2": 1, "w2": 1}


@pytest.mark.slow
def test_compare_tune_reports_both_losses_on_the_validation_birds(tmp_path):
    """``compare tune=true`` (one outer step each, tiny species): both losses tuned on the same
    tuning birds, scored on the same validation birds, with their θ and step counts."""
    import pandas as pd

    from birdflow.runs import read_run_info

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("compare", overrides=[
            f"data.root={tmp_path / 'data'}", "species.synthetic.size=0.5",
            "species.synthetic.n_tracks=40", "progress=false", "tensorboard=false", "tune=true",
            "tuning.steps=1"])
    report = compare(cfg, tmp_path / "report")
    text = report.read_text()
    assert "# L2 vs W2, each tuned by implicit differentiation" in text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    infos = {n: read_run_info(tmp_path / "report" / f"tune_{n}") for n in ("l2", "w2")}
    assert (tmp_path / "report" / "tune_l2" / "validation_tracks.csv").read_text() == \
        (tmp_path / "report" / "tune_w2" / "validation_tracks.csv").read_text()
    for n in ("l2", "w2"):
        m, info = metrics[n], infos[n]
        traj = pd.read_csv(tmp_path / "report" / f"tune_{n}" / "trajectory.csv")
        assert m["summary"]["n_intervals"] == info["n_validation_intervals"] > 0
        assert m["inner_steps"] == int(traj["inner_steps"].sum()) > 0
        assert m["theta"] == pytest.approx(info["theta"])
        assert f"| {n} | " in text


def test_report_states_each_runs_own_settings(tiny_bfdata):
    """A reused run (runs.l2=<dir>) is described by its own model file, not compare's defaults."""
    from conftest import independence_model

    from birdflow.evaluation.compare import run_settings

    model = independence_model(tiny_bfdata)
    model.hyperparameters.update(training_steps=40, rng_seed=3)
    line = run_settings(model)
    assert line.startswith("seed 3, 40 steps, weights obs 1, dist 0.01, ent 0.001")
