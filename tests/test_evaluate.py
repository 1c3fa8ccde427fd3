"""Evaluation metrics against hand-computed values on tiny chains, plus the CLI on a run dir."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_tiny_bfdata, run_command
from test_tracks import HAND_DISTR, WEEK_DATE, hand_bfdata, hand_rows, write_csv

from birdflow.cli.evaluate import main
from birdflow.data.bfdata import distances_km
from birdflow.data.tracks import TrackRowWarning, load_tracks
from birdflow.evaluation.evaluate import evaluate_model, format_report, transition_tv
from birdflow.evaluation.intervals import forecast_intervals, score_intervals
from birdflow.evaluation.metrics import distribution_performance, fit_metrics, sinkhorn_w2_km
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
    w2, conv, _ = sinkhorn_w2_km(mu, s, pts)  # default eps: these cases are exact at any blur
    # Diracs 100 km apart: 100 km; half the mass shifted by one 100-km step: sqrt(.01) = 100 km;
    # identical distributions: 0
    np.testing.assert_allclose(w2, [100.0, 100.0, 0.0], atol=0.5)
    assert conv.all()


def test_w2_metric_reads_a_one_cell_shift_within_5_percent(hand_model):
    """Default blur: week 2 of the hand model moves 5 % of the mass by one 100 km cell
    (cells 0 and 1), exact W2 = sqrt(.05) 100 km = 22.4 km; the metric reads it within 5 %."""
    fit = fit_metrics(hand_model, w2=True)
    x, y = hand_model.data["cell_x"].values, hand_model.data["cell_y"].values
    d01 = np.hypot(x[1] - x[0], y[1] - y[0]) / 1e3  # projected km, the W2 ground metric
    assert d01 == pytest.approx(100.0)
    assert fit["w2"][0] == pytest.approx(0.0, abs=0.5)
    assert fit["w2"][1] == pytest.approx(math.sqrt(0.05) * 100, rel=0.05)
    assert fit["w2_converged"].all()


@pytest.mark.parametrize("res_km", [100.0, 27.0])
def test_w2_metric_one_cell_shift_of_part_of_a_blob_against_the_exact_lp(res_km):
    """A 10 x 10 blob with 5 % of its mass moved one cell east; exact W2 from a linear
    program (squared-Euclidean cost); the default blur for the resolution is within 5 %."""
    from scipy.optimize import linprog

    from birdflow.evaluation.metrics import w2_epsilon

    side = 10
    yy, xx = np.mgrid[:side, :side]
    pts = np.stack([xx.ravel(), yy.ravel()], 1) * res_km / 1000.0  # 1000 km units
    blob = np.exp(-((xx - 4.5) ** 2 + (yy - 4.5) ** 2) / 8).ravel()
    blob /= blob.sum()
    src = np.flatnonzero(xx.ravel() == 4)
    moved = blob.copy()
    moved[src] -= blob[src] * 0.05 / blob[src].sum()
    moved[src + 1] += blob[src] * 0.05 / blob[src].sum()
    C = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    n = len(blob)
    eq = np.vstack([np.kron(np.eye(n), np.ones((1, n))), np.kron(np.ones((1, n)), np.eye(n))])
    lp = linprog(C.ravel(), A_eq=eq, b_eq=np.r_[moved, blob], bounds=(0, None), method="highs")
    exact_km = 1000 * np.sqrt(lp.fun)
    assert exact_km == pytest.approx(np.sqrt(0.05) * res_km, rel=1e-6)
    w2, conv, _ = sinkhorn_w2_km(moved[None], blob[None], pts, w2_epsilon(res_km))
    assert conv.all() and w2[0] == pytest.approx(exact_km, rel=0.05)
    old, *_ = sinkhorn_w2_km(moved[None], blob[None], pts, 0.01)  # the former default blur
    assert old[0] < 0.6 * exact_km


def test_grid_w2_metric_equals_the_point_cloud_one():
    """fit_metrics' W2 on a regular grid (kernel one axis at a time) = the O(n^2) point cloud."""
    from birdflow.bench.core import synthetic_bfdata
    from birdflow.evaluation.metrics import W2_THRESHOLD, W2_UNIT_M, grid_w2_km, w2_epsilon

    ds = synthetic_bfdata(60)
    s = ds["distr"].values[:4]
    mu = s * (0.5 + np.random.default_rng(0).random(s.shape))
    mu /= mu.sum(axis=1, keepdims=True)
    args = (ds["cell_row"].values, ds["cell_col"].values, ds["cell_x"].values, ds["cell_y"].values)
    eps = w2_epsilon(float(ds.attrs["res_km"]))
    xy = np.stack(args[2:], axis=1) / W2_UNIT_M
    want, *_ = sinkhorn_w2_km(mu, s, xy, eps)
    got, conv, err = grid_w2_km(mu, s, *args, eps)
    assert conv.all() and (err <= W2_THRESHOLD).all()  # every week exact, its error reported
    # both converged to the 1e-3 threshold, the grid's cold solves by epsilon scaling (the point
    # cloud's not), so they stop at different points within it: 5e-4 measured (2e-5 before)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    x_off = args[2].copy()
    x_off[0] += 1234.0  # a cell off the lattice: no grid, fit_metrics falls back
    assert grid_w2_km(mu, s, args[0], args[1], x_off, args[3], eps) is None


def test_interval_scores_by_hand(hand_model, tmp_path):
    ds = hand_model.data
    with pytest.warns(TrackRowWarning):
        tracks = load_tracks(write_csv(tmp_path / "t.csv", ds, hand_rows(ds)), ds)
    scored = score_intervals(hand_model, tracks.intervals).set_index("line1")
    kept = scored[scored["exclude"] == ""]
    # B (line 5): cell 0 -> (1, 0, 0) P1 P2 = (.4, .6, 0): end cell 2 in week 3 has p = 0 and is
    # scored with BirdFlowR's floor, not dropped; H (line 17, 378 days): no day cap by default
    assert kept.index.tolist() == [2, 3, 5, 17]
    assert kept["zero_probability"].tolist() == [False, False, True, False]
    D = ds["distance_km"].values
    d01, d02, d12 = D[0, 1], D[0, 2], D[1, 2]
    # A1: cell 1 wk 1 -> cell 0 wk 2: p = (.5, .5), s2 = (.6, .4)
    # A2: cell 0 wk 2 -> cell 1 wk 3: p = (.4, .6, 0), s3 = (.2, .3, .5)
    # B:  cell 0 wk 1 -> cell 2 wk 3: p = (.4, .6, 0); H: cell 0 wk 1 -> cell 1 wk 3, same p
    ll = np.log(np.array([0.5, 0.6, 0.0, 0.6]) + 1e-8)
    null_ll = np.log(np.array([0.6, 0.3, 0.5, 0.3]) + 1e-8)
    np.testing.assert_allclose(kept["ll"], ll)
    np.testing.assert_allclose(kept["null_ll"], null_ll)
    assert kept.loc[5, "ll"] == pytest.approx(np.log(1e-8))  # -18.42
    np.testing.assert_allclose(kept["win_distance"][:2], [0.4 * d01 - 0.5 * d01,
                                                          0.2 * d01 + 0.5 * d12 - 0.4 * d01])
    # B: distances to cell 2: pred .4 d02 + .6 d12, st .2 d02 + .3 d12
    assert kept.loc[5, "win_distance"] == pytest.approx(-0.2 * d02 - 0.3 * d12)
    assert kept.loc[2, "win_distance_fraction"] == pytest.approx(-0.25)
    # P(D_pred < D_st): A1 = P(pred at 0) P(st at d01) = .5 * .4; A2 = .6 * .7 + .4 * .5 (d12 > d01);
    # B: P = .4 * P(g_st > d02) + .6 * P(g_st > d12); cells 1 and 2 are diagonal neighbours,
    # so d02 < d12 and only s at cell 1 (.3) is farther than d02: .4 * .3 + .6 * 0 = .12
    assert d02 < d12
    np.testing.assert_allclose(kept["win_prob"], [0.2, 0.62, 0.12, 0.62])
    np.testing.assert_allclose(kept["energy_score_bf"][:2], [0.25 * d01, 0.16 * d01])
    np.testing.assert_allclose(kept["energy_score_st"][:2],
                               [0.16 * d01, 0.14 * d01 + 0.35 * d12 - 0.1 * d02])
    np.testing.assert_allclose(kept["weight"], [0.3 / 52, 0.6 / 52, 0.5 / 52, 0.5 / 52])
    result = evaluate_model(hand_model, tracks, w2=False)
    summ = result["summary"]
    assert summ["n_intervals"] == 4 and result["intervals"]["n_scored"] == 4
    assert summ["n_zero_probability"] == 1 and result["intervals"]["n_zero_probability"] == 1
    assert result["intervals"]["excluded"] == {
        "bad_row": 0, "not_active": 2, "too_long": 0, "truncated": 1, "same_week": 1,
        "dynamic_mask": 1, "filtered": 0}
    w = np.array([0.3, 0.6, 0.5, 0.5]) / 1.9
    assert summ["mean_ll"] == pytest.approx(ll.mean())
    assert summ["mean_null_ll"] == pytest.approx(null_ll.mean())
    assert summ["mean_ll_gain"] == pytest.approx((ll - null_ll).mean())
    assert summ["weighted_mean_ll"] == pytest.approx(w @ ll)
    assert summ["mean_win_prob"] == pytest.approx((0.2 + 0.62 + 0.12 + 0.62) / 4)
    assert summ["weighted_mean_win_prob"] == pytest.approx(w @ [0.2, 0.62, 0.12, 0.62])
    assert summ["mean_l2"] == pytest.approx(0.0392 / 3)
    json.dumps(result, allow_nan=False)


def test_interval_scores_without_a_stored_distance_matrix(hand_model, tmp_path):
    """Files above DISTANCE_MATRIX_MAX_CELLS hold no distance_km: distances come from the
    coordinates (same log-likelihoods and distances), the all-pairs energy scores are NaN."""
    ds = hand_model.data
    with pytest.warns(TrackRowWarning):
        tracks = load_tracks(write_csv(tmp_path / "t.csv", ds, hand_rows(ds)), ds)
    full = score_intervals(hand_model, tracks.intervals)
    lean = dataclasses.replace(hand_model, data=ds.drop_vars("distance_km"))
    np.testing.assert_allclose(distances_km(lean.data), ds["distance_km"].values, rtol=1e-12)
    np.testing.assert_allclose(distances_km(lean.data, np.array([2, 0])),
                               ds["distance_km"].values[:, [2, 0]], rtol=1e-12)
    scored = score_intervals(lean, tracks.intervals)
    kept = scored["exclude"] == ""
    for col in ("ll", "null_ll", "pred_km", "st_km", "win_distance", "win_prob"):
        np.testing.assert_allclose(scored.loc[kept, col], full.loc[kept, col], rtol=1e-12)
    assert scored.loc[kept, "energy_score_bf"].isna().all()
    assert full.loc[kept, "energy_score_bf"].notna().all()


def test_interval_day_cap_is_an_option_recorded_in_the_result(hand_model, tmp_path):
    """Default: no cap (BirdFlowR); max_days=365 excludes the 378-day interval as too_long."""
    ds = hand_model.data
    csv = write_csv(tmp_path / "t.csv", ds, hand_rows(ds))
    with pytest.warns(TrackRowWarning):
        default = evaluate_model(hand_model, csv, w2=False)["intervals"]
    with pytest.warns(TrackRowWarning):
        capped = evaluate_model(hand_model, csv, w2=False, max_days=365)["intervals"]
    assert default["rules"]["max_days"] is None and "BirdFlowR" in default["rules"]["convention"]
    assert default["excluded"]["too_long"] == 0 and default["n_scored"] == 4
    assert capped["rules"]["max_days"] == 365 and capped["rules"]["convention"] == "custom window"
    assert capped["excluded"]["too_long"] == 1 and capped["n_scored"] == 3


def test_interval_across_year_wrap(tmp_path):
    """Cyclic model: identity transitions except 52 -> 1 (A, a cycle) and 1 -> 2 (B)."""
    ds = hand_bfdata(weeks=range(1, 53), distr=np.full((52, 3), 1 / 3))
    A = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    B = np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]])
    Ps = [np.eye(3)] * 52
    Ps[51], Ps[0] = A, B
    model = chain_model(ds, np.full(3, 1 / 3), Ps)
    rows = [("W", "2022-12-13", 0), ("W", "2023-01-18", 2),   # week 50 -> 3: e0 A B = (0, .5, .5)
            ("X", "2022-12-13", 0), ("X", "2023-01-18", 0),   # same path, end cell has p = 0
            ("Y", "2022-01-04", 0), ("Y", "2023-01-03", 1),   # week 1 -> week 1, 364 days:
            ("Z", "2022-01-04", 0), ("Z", "2022-01-06", 0)]   # a full cycle; Z: same week
    tracks = load_tracks(write_csv(tmp_path / "w.csv", ds, rows), ds)
    assert tracks.intervals["lag"].tolist() == [5, 5, 52, -1]
    scored = score_intervals(model, tracks.intervals)
    assert scored["exclude"].tolist() == ["", "", "", "same_week"]
    assert scored["zero_probability"].tolist() == [False, True, False, False]
    # W: e0 A B = (0, .5, .5); Y: e0 B (identity...) A = (.5, .5, 0) A = (0, .5, .5)
    np.testing.assert_allclose(scored["ll"][:3], np.log(np.array([0.5, 0.0, 0.5]) + 1e-8))
    assert scored["null_ll"][0] == pytest.approx(np.log(1 / 3 + 1e-8))


def random_chain_model(seed: int, chain_seed: int):
    """A 3 x 3 tiny grid's chain with random transitions inside each week's dynamic mask."""
    ds = make_tiny_bfdata(n_rows=3, n_cols=3, seed=seed)
    dyn = ds["dynamic_mask"].values
    rng = np.random.default_rng(chain_seed)
    Ps = []
    for t in range(52):
        P = rng.random((ds.sizes["cell"],) * 2) * dyn[(t + 1) % 52]
        Ps.append(P / P.sum(axis=1, keepdims=True))
    return chain_model(ds, ds["distr"].values[0], Ps)


def test_pipeline_season_metrics_from_species_season_dates():
    """min_dist_cor etc. are BirdFlowPipeline's two-migration means over the buffered season
    weeks (one week each side), checked against np.corrcoef of the model's distributions."""
    model = random_chain_model(seed=5, chain_seed=2)
    ds, dyn = model.data, model.data["dynamic_mask"].values
    model.data.attrs.update(prebreeding_migration_start="2022-03-01",  # week 9 -> 8..23
                            prebreeding_migration_end="2022-05-31",  # week 22
                            postbreeding_migration_start="2022-12-20",  # week 51 -> 50..5
                            postbreeding_migration_end="2023-01-25")  # week 4 (wraps)
    summ = evaluate_model(model, w2=False)["summary"]
    mu, s = model.distrs(), ds["distr"].values
    cor = np.array([np.corrcoef(mu[t][dyn[t]], s[t][dyn[t]])[0, 1] for t in range(52)])
    pre = cor[7:22]  # "from" weeks 8..22 of the sequence 8..23
    post = cor[[49, 50, 51, 0, 1, 2, 3]]  # from weeks 50..52, 1..4 of 50..5
    assert summ["min_dist_cor_prebreeding"] == pytest.approx(pre.min())
    assert summ["mean_dist_cor_postbreeding"] == pytest.approx(post.mean())
    assert summ["min_dist_cor"] == pytest.approx((pre.min() + post.min()) / 2)
    assert summ["mean_dist_cor"] == pytest.approx((pre.mean() + post.mean()) / 2)
    assert summ["min_distr_cor"] == pytest.approx(cor.min())  # the whole-year one, unchanged
    assert summ["min_dist_cor"] != pytest.approx(summ["min_distr_cor"])
    assert -1 < summ["traverse_cor"] < 1 and "traverse_cor_st_prebreeding" in summ


def test_forecasts_match_dense_projection(tmp_path):
    """Slot-layout batched forecasts equal BirdFlowModel.forecast (dense) on a random chain."""
    model = random_chain_model(seed=3, chain_seed=0)
    dyn = model.data["dynamic_mask"].values
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
    """A learned chain that differs from the truth in one row: both scored by hand."""
    ds = hand_model.data
    rows = [("A", WEEK_DATE[1], 0), ("A", WEEK_DATE[2], 1), ("A", WEEK_DATE[3], 1)]
    tracks = load_tracks(write_csv(tmp_path / "t.csv", ds, rows), ds)
    P1_learned = P1.copy()
    P1_learned[0] = [0.5, 0.5, 0.0]
    learned = chain_model(ds, HAND_DISTR[0], [P1_learned, P2])
    # only row 0 of transition 1 differs: TV .5, weight mu_true_1(cell 0) = .5; mean over 2
    assert transition_tv(learned, hand_model) == pytest.approx(0.125)
    res = evaluate_model(learned, tracks, truth=hand_model, w2=False)["summary"]
    # cell 0 wk 1 -> cell 1 wk 2: learned p = .5, true p = 0 (floored: log 1e-8);
    # cell 1 wk 2 -> cell 1 wk 3: row 1 of P2 is (0, 0, 1) in both: p = 0 (floored)
    ll_learned = np.log(np.array([0.5, 0.0]) + 1e-8)
    ll_true = np.log(np.array([0.0, 0.0]) + 1e-8)
    null = np.log(np.array([0.4, 0.3]) + 1e-8)
    assert res["truth_transition_tv"] == pytest.approx(0.125)
    assert res["mean_ll"] == pytest.approx(ll_learned.mean())
    assert res["truth_mean_ll"] == pytest.approx(ll_true.mean())
    assert res["truth_mean_ll_gain"] == pytest.approx((ll_true - null).mean())
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
    assert summ["n_intervals"] == 4 and summ["truth_transition_tv"] == pytest.approx(0, abs=1e-6)
    ll = np.log(np.array([0.5, 0.6, 0.0, 0.6]) + 1e-8)  # as in test_interval_scores_by_hand
    assert summ["mean_ll"] == pytest.approx(ll.mean(), rel=1e-6)  # float32 on disk
    assert result["intervals"]["rules"]["max_days"] is None
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
    """The real BirdFlowR model: distribution performance equals an independent computation
    straight from the HDF5 datasets (h5py + np.corrcoef, BirdFlowR's definitions, section 3.1)."""
    import h5py

    hdf5_read = pytest.importorskip("birdflow.export.hdf5_read")
    model = hdf5_read.import_birdflowr(sstspa_hdf5)
    result = evaluate_model(model, w2=False)
    summ = result["summary"]
    with h5py.File(sstspa_hdf5, "r") as f:
        distr = f["distr"][()]  # (68 cells, 53)
        dyn = f["geom/dynamic_mask"][()].astype(bool)
        rowsums = [f[f"marginals/Week{t}_to_{t + 1}"][()].sum(axis=1) for t in range(1, 53)]
    cors = [np.corrcoef(distr[dyn[:, t], t], rowsums[t])[0, 1] for t in range(52)]
    assert summ["n_weeks"] == 52 and summ["n_cells"] == 68
    np.testing.assert_allclose(result["per_week"]["distr_cor"], cors, rtol=1e-5)
    assert summ["min_distr_cor"] == pytest.approx(min(cors), rel=1e-5)
    assert summ["mean_distr_cor"] == pytest.approx(np.mean(cors), rel=1e-5)
    assert summ["n_states"] == sum(int((r > 0).sum()) for r in rowsums)
    json.dumps(result, allow_nan=False)


def test_cli_multirun_evaluates_each_run(hand_model, tmp_path, monkeypatch):
    """``birdflow evaluate -m run=a,b``: one Hydra multirun, one metrics.json per run."""
    monkeypatch.chdir(tmp_path)
    runs = [_run_dir(hand_model, tmp_path / name) for name in ("a", "b")]
    assert run_command(main, ["-m", f"run={runs[0]},{runs[1]}", "w2=false"]) == 0
    for run in runs:
        summary = json.loads((run / "metrics.json").read_text())["summary"]
        assert summary["n_cells"] == hand_model.n_cells and summary["mean_w2"] is None
