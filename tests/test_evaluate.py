"""Evaluation metrics against hand-computed values on tiny chains, plus the CLI on a run dir."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_tiny_bfdata, run_command
from test_tracks import HAND_DISTR, WEEK_DATE, hand_bfdata, hand_rows, write_csv

from birdflow.data.tracks import TrackRowWarning, load_tracks
from birdflow.evaluate import main
from birdflow.evaluation.evaluate import evaluate_model, format_report, transition_tv
from birdflow.evaluation.metrics import (
    distribution_performance,
    fit_metrics,
    forecast_intervals,
    score_intervals,
    sinkhorn_w2_km,
)
from birdflow.model.fitted import BirdFlowModel, save_model
from birdflow.model.markov import WeekIndex

# Hand chain on the 3 active cells of test_tracks.hand_bfdata (rows: from-cell, cols: to-cell).
P1 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])  # week 1 -> 2
P2 = np.array([[0.4, 0.6, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # week 2 -> 3 (cell 2 unused)
# model distributions: mu1 = s1 = (.5, .3, .2); mu2 = mu1 P1 = (.65, .35, 0);
# mu3 = mu2 P2 = (.26, .39, .35)


def chain_model(ds, mu0, transitions) -> BirdFlowModel:
    """BirdFlowModel whose joints are diag(mu_t) P_t, P_t given as dense cell matrices."""
    index = WeekIndex.from_bfdata(ds)
    M = np.zeros((index.n_transitions, index.n_max, index.n_max))
    mu = np.asarray(mu0, float)
    for t, P in enumerate(transitions):
        joint = mu[:, None] * P
        sf, st = index.slot_cell[t], index.slot_cell[(t + 1) % index.n_weeks]
        fi, ti = np.flatnonzero(sf >= 0), np.flatnonzero(st >= 0)
        M[np.ix_([t], fi, ti)] = joint[np.ix_(sf[fi], st[ti])]
        mu = joint.sum(axis=0)
    return BirdFlowModel(data=ds, index=index, marginals=M, hyperparameters={"obs_weight": 1.0})


@pytest.fixture
def hand_model():
    return chain_model(hand_bfdata(), HAND_DISTR[0], [P1, P2])


def test_fit_and_distribution_performance_by_hand(hand_model):
    fit = fit_metrics(hand_model, w2=False)
    # week 2: diffs (.05, -.05, 0); week 3: (.06, .09, -.15)
    np.testing.assert_allclose(fit["l2"], [0.0, 0.005, 0.0342], atol=1e-12)
    np.testing.assert_allclose(fit["tv"], [0.0, 0.05, 0.15], atol=1e-12)
    perf = distribution_performance(hand_model)
    # cor((26, 39, 35), (20, 30, 50)) = 960 / sqrt(798 * 4200) (deviations from 100/3, x 300)
    cor3 = 960 / math.sqrt(798 * 4200)
    # s2 P2 = (.24, .36, .40); cor with s3 = 2040 / sqrt(1248 * 4200)
    step2 = 2040 / math.sqrt(1248 * 4200)
    np.testing.assert_allclose(perf["distr_cor"], [1.0, 1.0, cor3], atol=1e-12)
    # two dynamic-mask cells in week 2: (.65, .35) vs (.6, .4) correlate perfectly
    np.testing.assert_allclose(perf["single_step_cor"][:2], [1.0, step2], atol=1e-12)
    assert np.isnan(perf["single_step_cor"][2])  # week 3 starts no transition
    assert perf["mean_distr_cor"] == pytest.approx(1.0) and perf["min_distr_cor"] == pytest.approx(1.0)
    assert perf["mean_step_cor"] == pytest.approx((1 + step2) / 2)
    assert perf["min_step_cor"] == pytest.approx(step2)
    assert perf["st_traverse_cor"] == pytest.approx(cor3)  # s1 P1 P2 = mu3
    assert perf["md_traverse_cor"] == pytest.approx(cor3)
    assert perf["n_states"] == 5  # 3 cells in week 1 + 2 in week 2
    part = distribution_performance(hand_model, week_range=(2, 3))
    assert part["st_traverse_cor"] == pytest.approx(step2)
    assert part["md_traverse_cor"] == pytest.approx(cor3)
    assert part["mean_step_cor"] == pytest.approx(step2)


def test_sinkhorn_w2_hand_values():
    pts = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [3.0, 3.0]])  # 1000 km units
    mu = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.3, 0.2, 0, 0.5]])
    s = np.array([[0, 1.0, 0, 0], [0, 0.5, 0.5, 0], [0.3, 0.2, 0, 0.5]])
    w2, conv = sinkhorn_w2_km(mu, s, pts)  # default eps: these cases are exact at any blur
    # Diracs 100 km apart: 100 km; half the mass shifted by one 100-km step: sqrt(.01) = 100 km;
    # identical distributions: 0
    np.testing.assert_allclose(w2, [100.0, 100.0, 0.0], atol=0.5)
    assert conv.all()


def test_fit_metrics_w2_on_model(hand_model):
    fit = fit_metrics(hand_model, w2=True, epsilon=1e-4)
    x, y = hand_model.data["cell_x"].values, hand_model.data["cell_y"].values
    d01 = np.hypot(x[1] - x[0], y[1] - y[0]) / 1e3  # projected km, the W2 ground metric
    # week 2 moves 5 % of the mass between cells 0 and 1 (100 km): exact W2 = sqrt(.05) 100 km;
    # at eps = 1e-4 (10 km blur) the debiased value is within 2 %
    assert d01 == pytest.approx(100.0)
    assert fit["w2"][0] == pytest.approx(0.0, abs=0.5)
    assert fit["w2"][1] == pytest.approx(math.sqrt(0.05) * 100, rel=0.02)


def test_interval_scores_by_hand(hand_model, tmp_path):
    ds = hand_model.data
    with pytest.warns(TrackRowWarning):
        tracks = load_tracks(write_csv(tmp_path / "t.csv", ds, hand_rows(ds)), ds)
    scored = score_intervals(hand_model, tracks.intervals).set_index("line1")
    # bird B: cell 0 -> (1, 0, 0) P1 P2 = (.4, .6, 0), so cell 2 in week 3 has probability 0
    assert scored.loc[5, "exclude"] == "zero_probability"
    kept = scored[scored["exclude"] == ""]
    assert kept.index.tolist() == [2, 3]
    D = ds["distance_km"].values
    d01, d02, d12 = D[0, 1], D[0, 2], D[1, 2]
    # A1: cell 1 wk 1 -> cell 0 wk 2: p = (.5, .5), s2 = (.6, .4)
    # A2: cell 0 wk 2 -> cell 1 wk 3: p = (.4, .6, 0), s3 = (.2, .3, .5)
    np.testing.assert_allclose(kept["ll"], np.log([0.5, 0.6]))
    np.testing.assert_allclose(kept["null_ll"], np.log([0.6, 0.3]))
    np.testing.assert_allclose(kept["win_distance"], [0.4 * d01 - 0.5 * d01,
                                                      0.2 * d01 + 0.5 * d12 - 0.4 * d01])
    assert kept.loc[2, "win_distance_fraction"] == pytest.approx(-0.25)
    # P(D_pred < D_st): A1 = P(pred at 0) P(st at d01) = .5 * .4; A2 = .6 * .7 + .4 * .5 (d12 > d01)
    np.testing.assert_allclose(kept["win_prob"], [0.2, 0.62])
    np.testing.assert_allclose(kept["energy_score_bf"], [0.25 * d01, 0.16 * d01])
    np.testing.assert_allclose(kept["energy_score_st"],
                               [0.16 * d01, 0.14 * d01 + 0.35 * d12 - 0.1 * d02])
    np.testing.assert_allclose(kept["weight"], [0.3 / 52, 0.6 / 52])
    result = evaluate_model(hand_model, tracks, w2=False)
    summ = result["summary"]
    assert summ["n_intervals"] == 2 and result["intervals"]["n_scored"] == 2
    assert result["intervals"]["excluded"] == {
        "bad_row": 0, "not_active": 2, "too_long": 1, "truncated": 1, "same_week": 1,
        "dynamic_mask": 1, "filtered": 0, "zero_probability": 1}
    assert summ["mean_ll"] == pytest.approx(np.log(0.3) / 2)  # (log .5 + log .6) / 2
    assert summ["mean_null_ll"] == pytest.approx(np.log(0.18) / 2)
    assert summ["mean_ll_gain"] == pytest.approx(np.log(0.3 / 0.18) / 2)
    assert summ["weighted_mean_ll"] == pytest.approx((0.3 * np.log(0.5) + 0.6 * np.log(0.6)) / 0.9)
    assert summ["mean_win_prob"] == pytest.approx(0.41)
    assert summ["weighted_mean_win_prob"] == pytest.approx((0.3 * 0.2 + 0.6 * 0.62) / 0.9)
    assert summ["mean_l2"] == pytest.approx(0.0392 / 3)
    json.dumps(result, allow_nan=False)


def test_interval_across_year_wrap(tmp_path):
    """Cyclic model: identity transitions except 52 -> 1 (A, a cycle) and 1 -> 2 (B)."""
    ds = hand_bfdata(weeks=range(1, 53), distr=np.full((52, 3), 1 / 3))
    A = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    B = np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]])
    Ps = [np.eye(3)] * 52
    Ps[51], Ps[0] = A, B
    model = chain_model(ds, np.full(3, 1 / 3), Ps)
    rows = [("W", "2022-12-13", 0), ("W", "2023-01-18", 2),   # week 50 -> 3: e0 A B = (0, .5, .5)
            ("X", "2022-12-13", 0), ("X", "2023-01-18", 0)]   # same path, end cell has p = 0
    tracks = load_tracks(write_csv(tmp_path / "w.csv", ds, rows), ds)
    assert tracks.intervals["lag"].tolist() == [5, 5]
    scored = score_intervals(model, tracks.intervals)
    assert scored["exclude"].tolist() == ["", "zero_probability"]
    assert scored["ll"][0] == pytest.approx(np.log(0.5))
    assert scored["null_ll"][0] == pytest.approx(np.log(1 / 3))


def test_forecasts_match_dense_projection(tmp_path):
    """Slot-layout batched forecasts equal BirdFlowModel.forecast (dense) on a random chain."""
    ds = make_tiny_bfdata(n_rows=3, n_cols=3, seed=3)
    dyn = ds["dynamic_mask"].values
    rng = np.random.default_rng(0)
    Ps = []
    for t in range(52):
        P = rng.random((ds.sizes["cell"],) * 2) * dyn[(t + 1) % 52]
        Ps.append(P / P.sum(axis=1, keepdims=True))
    model = chain_model(ds, ds["distr"].values[0], Ps)
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(8):
        t1, lag = int(rng.integers(52)), int(rng.integers(1, 12))
        c1 = int(rng.choice(np.flatnonzero(dyn[t1])))
        rows.append({"t1": t1, "lag": lag, "cell1": c1})
    iv = pd.DataFrame(rows)
    p = forecast_intervals(model, iv)
    for k, r in iv.iterrows():
        start = np.eye(model.n_cells)[r.cell1]
        np.testing.assert_allclose(p[k], model.forecast_at(start, r.t1, r.lag)[-1], atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_truth_metrics(hand_model, tmp_path):
    ds = hand_model.data
    rows = [("A", WEEK_DATE[1], 1), ("A", WEEK_DATE[2], 0), ("A", WEEK_DATE[3], 1)]
    tracks = load_tracks(write_csv(tmp_path / "t.csv", ds, rows), ds)
    same = evaluate_model(hand_model, tracks, truth=hand_model, w2=False)["summary"]
    assert same["truth_transition_tv"] == pytest.approx(0.0)
    assert same["truth_mean_ll"] == pytest.approx(same["mean_ll"])
    P1_learned = P1.copy()
    P1_learned[0] = [0.5, 0.5, 0.0]
    learned = chain_model(ds, HAND_DISTR[0], [P1_learned, P2])
    # only row 0 of transition 1 differs: TV .5, weight mu_true_1(cell 0) = .5; mean over 2
    assert transition_tv(learned, hand_model) == pytest.approx(0.125)
    other = chain_model(make_tiny_bfdata(n_rows=2, n_cols=3, n_weeks=3, zero_frac=0.0),
                        np.full(5, 0.2), [np.full((5, 5), 0.2)] * 2)
    res = evaluate_model(hand_model, tracks, truth=other, w2=False)
    assert res["summary"]["truth_transition_tv"] is None
    assert res["notes"] == ["truth metrics skipped: grid shapes differ ((2, 2) vs (2, 3))"]


def _run_dir(model, tmp_path, tracks=None, truth=None):
    run = tmp_path / "outputs" / "hand" / "l2" / "2026-01-01_00-00-00"
    save_model(model, run)
    (run / "run.json").write_text(json.dumps({
        "species": "hand", "loss": "l2", "data_path": None, "seed": 0, "status": "finished",
        "tracks": tracks, "truth": truth, "steps_done": 1, "runtime_s": 0.1}))
    return run


def test_cli_writes_metrics_json(hand_model, tmp_path, capsys):
    ds = hand_model.data
    csv = write_csv(tmp_path / "t.csv", ds, hand_rows(ds))
    truth = tmp_path / "truth"
    save_model(hand_model, truth)
    run = _run_dir(hand_model, tmp_path, tracks=str(csv), truth=str(truth))
    with pytest.warns(TrackRowWarning):
        assert run_command(main, [f"run={run}", "w2=false", "week_range=[1,3]"]) == 0
    out = capsys.readouterr().out
    assert "mean_ll" in out and "intervals excluded: not_active=2" in out
    result = json.loads((run / "metrics.json").read_text())
    summ = result["summary"]
    assert summ["n_intervals"] == 2 and summ["truth_transition_tv"] == pytest.approx(0, abs=1e-6)
    assert summ["mean_ll"] == pytest.approx(np.log(0.3) / 2, rel=1e-6)  # float32 on disk
    assert summ["range_st_traverse_cor"] == pytest.approx(summ["st_traverse_cor"])
    assert "w2" not in result["per_week"] and summ["mean_w2"] is None
    assert len(result["per_week"]["tv"]) == 3 and result["tracks"] == str(csv)
    assert format_report(result).count("\n") > 20


def test_cli_bad_input_one_line(hand_model, tmp_path, capsys):
    run = _run_dir(hand_model, tmp_path)
    assert run_command(main, [f"run={run}", "color=red"]) == 2
    assert run_command(main, [f"run={tmp_path / 'missing'}"]) == 2
    bad = tmp_path / "cols.csv"
    bad.write_text("bird_id,when,lat,lon\n")
    assert run_command(main, [f"run={run}", f"tracks={bad}", "w2=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("birdflow evaluate: error: ") for line in err)
    assert "color=red" in err[0] and "no fitted model here" in err[1] and "['date']" in err[2]


@pytest.mark.slow
def test_cli_subprocess(hand_model, tmp_path):
    run = _run_dir(hand_model, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "birdflow.evaluate", f"run={run}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "mean_w2" in proc.stdout
    result = json.loads((run / "metrics.json").read_text())
    assert result["summary"]["n_intervals"] == 0 and len(result["per_week"]["w2"]) == 3


@pytest.mark.shared
def test_imported_sstspa_model(sstspa_hdf5):
    """The real BirdFlowR model evaluates (skips when the importer or the file is absent)."""
    hdf5_read = pytest.importorskip("birdflow.export.hdf5_read")
    model = hdf5_read.import_birdflowr(sstspa_hdf5)
    result = evaluate_model(model, w2=False)
    summ = result["summary"]
    assert summ["n_weeks"] == 52 and summ["n_cells"] == 68
    for key in ("mean_distr_cor", "min_distr_cor", "mean_step_cor", "min_step_cor",
                "st_traverse_cor", "md_traverse_cor"):
        assert -1.0 <= summ[key] <= 1.0
    assert summ["min_distr_cor"] <= summ["mean_distr_cor"]
    assert 0.0 <= summ["mean_tv"] <= 1.0 and len(result["per_week"]["distr_cor"]) == 52
    json.dumps(result, allow_nan=False)


def test_cli_multirun_evaluates_each_run(hand_model, tmp_path, monkeypatch):
    """``birdflow evaluate -m run=a,b``: one Hydra multirun, one metrics.json per run."""
    monkeypatch.chdir(tmp_path)
    runs = [_run_dir(hand_model, tmp_path / name) for name in ("a", "b")]
    assert run_command(main, ["-m", f"run={runs[0]},{runs[1]}", "w2=false"]) == 0
    for run in runs:
        summary = json.loads((run / "metrics.json").read_text())["summary"]
        assert summary["n_cells"] == hand_model.n_cells and summary["mean_w2"] is None
