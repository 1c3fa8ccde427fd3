"""Validation metrics against hand computations and against the synthetic truth.

The truth checks: the true chain's PITs are uniform (KS distance below the 5 % critical value
for its n), its 95 % set covers 95 % within the binomial range, its MC from the birds' origins
lies inside the observed bootstrap interval; the chain with transitions spread twice as wide
(:func:`birdflow.synthetic.widened.widen_transitions`) fails each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from birdflow.data.bfdata import make_bfdata
from birdflow.data.grid import great_circle_km
from birdflow.data.tracks import load_tracks
from birdflow.data.weeks import week_dates
from birdflow.evaluation import calibration, connectivity, route_biology
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.markov import WeekIndex
from birdflow.synthetic import sample_tracks, synthetic_truth
from birdflow.synthetic.widened import widen_transitions

CFG = {"code": "synthetic", "version_year": 2022, "synthetic": {}}


def write_tracks(df: pd.DataFrame, path, source: str | None = None):
    out = df[["bird_id", "date", "lat", "lon"]].assign(date=df["date"].dt.strftime("%Y-%m-%d"))
    if source is not None:
        out["source"] = source
    out.to_csv(path, index=False, float_format="%.6f")
    return path


@pytest.fixture(scope="module")
def flyway(tmp_path_factory):
    """The default synthetic species' truth, its widened chain and 200 birds' tracks."""
    _, truth = synthetic_truth(CFG)
    path = write_tracks(sample_tracks(truth, 200, 0), tmp_path_factory.mktemp("fly") / "t.csv")
    return truth, widen_transitions(truth, 2.0), load_tracks(path, truth.data)


# -- hand computations ------------------------------------------------------------------------

def test_pit_and_hpd_of_one_forecast_by_hand():
    # 2 x 2 grid, cells row-major: 0 = NW, 1 = NE, 2 = SW, 3 = SE; the bird is seen in SW
    f = np.array([[0.1, 0.2, 0.3, 0.4]])
    rows, cols, end, u = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([2]), np.array([0.5])
    # rows north of row 1 hold 0.1 + 0.2; half of row 1's 0.3 + 0.4
    assert calibration.pit(f, end, rows, u)[0] == pytest.approx(0.3 + 0.5 * 0.7)
    # no column west of column 0; half of column 0's 0.1 + 0.3
    assert calibration.pit(f, end, cols, u)[0] == pytest.approx(0.5 * 0.4)
    v, w = calibration.hpd_rank(f, end, u)  # cells less likely than 0.3: 0.1 + 0.2
    assert (v[0], w[0]) == pytest.approx((0.3 + 0.5 * 0.3, 0.6))
    for level, inside, mass in ((0.95, True, 1.0), (0.7, True, 0.7), (0.5, True, 0.7),
                                (0.3, False, 0.4)):
        got = calibration.hpd_set(f, end, level)
        assert (bool(got[0][0]), float(got[1][0])) == (inside, pytest.approx(mass)), level


def test_pit_of_one_interval_through_the_model_by_hand(flyway):
    truth, _, tracks = flyway
    iv = tracks.intervals.iloc[[0]]
    scored = calibration.score(truth, iv, seed=3)
    u = np.random.default_rng(3).random((3, 1))[:, 0]
    t1, lag, c1, c2 = (int(iv[k].iloc[0]) for k in ("t1", "lag", "cell1", "cell2"))
    d = np.zeros(truth.n_cells)
    d[c1] = 1.0
    for k in range(lag):  # dense transitions, one week at a time
        d = d @ truth.transition_at((t1 + k) % 52)
    r, c = calibration.cell_rows_cols(truth.data)
    north = d[r < r[c2]].sum() + u[0] * d[r == r[c2]].sum()
    west = d[c < c[c2]].sum() + u[1] * d[c == c[c2]].sum()
    less = d[d < d[c2]].sum() + u[2] * d[d == d[c2]].sum()
    assert scored[["pit_row", "pit_col", "hpd_v"]].iloc[0].tolist() == pytest.approx(
        [north, west, less], abs=1e-9)
    assert scored["ll"].iloc[0] == pytest.approx(np.log(d[c2] + 1e-8))


def test_mc_two_sites_by_hand():
    # two origins and two targets 1 apart, half the birds at each origin, psi = 0.8 to the
    # "own" target: D-bar 0.5, sd_D 0.5; E[V] 0.32 within a site, 0.68 across; sd_V 0.5;
    # cov = 0.5 (-0.5)(0.32) + 0.5 (0.5)(0.68) = 0.09, MC = 0.09 / 0.25 = 0.36 = (0.8 - 0.2)^2
    D = V = np.array([[0.0, 1.0], [1.0, 0.0]])
    psi = np.array([[0.8, 0.2], [0.2, 0.8]])
    assert connectivity.cohen_mc(np.array([0.5, 0.5]), psi, D, V) == pytest.approx(0.36)
    assert connectivity.cohen_mc(np.array([0.5, 0.5]), np.eye(2), D, V) == pytest.approx(1.0)
    assert connectivity.cohen_mc(np.array([0.5, 0.5]), np.full((2, 2), 0.5), D, V) == \
        pytest.approx(0.0)


def test_mc_equals_explicit_sum_over_pairs_and_mantel():
    rng = np.random.default_rng(0)
    pts_o, pts_t = rng.random((4, 2)), rng.random((5, 2))
    D = np.linalg.norm(pts_o[:, None] - pts_o[None], axis=2)
    V = np.linalg.norm(pts_t[:, None] - pts_t[None], axis=2)
    pi, psi = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(5), size=4)
    # Cohen et al. 2018 eq. 3 written out: every (i, k, l, m) with weight pi_i psi_ik pi_l psi_lm
    w = np.einsum("i,ik,l,lm->iklm", pi, psi, pi, psi)
    d = np.broadcast_to(D[:, None, :, None], w.shape)
    v = np.broadcast_to(V[None, :, None, :], w.shape)
    dm, vm = (w * d).sum(), (w * v).sum()
    want = (w * (d - dm) * (v - vm)).sum() / np.sqrt((w * (d - dm) ** 2).sum() * (w * (v - vm) ** 2).sum())
    assert connectivity.cohen_mc(pi, psi, D, V) == pytest.approx(want, abs=1e-12)
    # one observed target per bird, distinct birds: the Mantel correlation of the distances
    ends = rng.integers(0, 5, 4)
    iu = np.triu_indices(4, 1)
    mantel = np.corrcoef(D[iu], V[np.ix_(ends, ends)][iu])[0, 1]
    got = connectivity.cohen_mc(np.full(4, 0.25), np.eye(5)[ends], D, V, distinct=True)
    assert got == pytest.approx(mantel, abs=1e-12)


def test_bootstrap_mantel_equals_the_weighted_formula_per_resample():
    rng = np.random.default_rng(1)
    pts_o, pts_t = rng.random((30, 2)), rng.random((30, 2))
    D = np.linalg.norm(pts_o[:, None] - pts_o[None], axis=2)
    V = np.linalg.norm(pts_t[:, None] - pts_t[None], axis=2)
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=5).astype(float)
    got = connectivity.bootstrap_mantel(counts, D, V)
    # the same resample written out: every pair of draws of two different birds
    for b, c in enumerate(counts):
        draws = np.repeat(np.arange(30), c.astype(int))
        i, j = np.triu_indices(len(draws), 1)
        keep = draws[i] != draws[j]
        want = np.corrcoef(D[draws[i], draws[j]][keep], V[draws[i], draws[j]][keep])[0, 1]
        assert got[b] == pytest.approx(want, abs=1e-12)


# -- the synthetic truth, and a chain spread twice as wide ----------------------------------

def test_true_chain_is_calibrated_and_the_widened_chain_is_not(flyway):
    truth, wide, tracks = flyway
    s_true = calibration.summarise(calibration.score(truth, tracks.intervals))
    s_wide = calibration.summarise(calibration.score(wide, tracks.intervals))
    n, crit = s_true["n"], s_true["ks_critical"]
    lo, hi = s_true["coverage_range"]
    assert n == 5109 and crit == pytest.approx(0.0190, abs=1e-4)
    # measured: KS 0.0094 (rows), 0.0084 (columns); coverage 0.952 in [0.944, 0.956]
    assert s_true["ks_row"] < crit and s_true["ks_col"] < crit, s_true
    assert lo <= s_true["coverage"] <= hi and s_true["coverage_ok"], s_true
    # twice as wide: KS 0.110 / 0.079, coverage 0.996 (over-dispersed forecasts cover too much)
    assert s_wide["ks_row"] > crit and s_wide["ks_col"] > crit, s_wide
    assert s_wide["coverage"] > hi and not s_wide["coverage_ok"], s_wide


def column_chain(n_rows: int = 10, n_cols: int = 8, drift: float = 0.1) -> BirdFlowModel:
    """A 52-week chain with strong connectivity: birds keep their column (a random walk of
    ``drift`` per side and week, reflected at the edges) while the whole population moves one
    row a week between a breeding row (north) and a wintering row (south)."""
    row = np.empty(52, int)
    t = np.arange(52)
    row[:10], row[40:] = n_rows - 1, n_rows - 1
    row[10:19] = n_rows - 1 - (t[10:19] - 9)
    row[19:31] = 0
    row[31:40] = t[31:40] - 30
    cube = np.zeros((52, n_rows, n_cols))
    cube[t, row, :] = 1.0
    x = np.arange(n_cols) * 1e5 + 5e4
    y = 2.0e6 - np.arange(n_rows) * 1e5
    dates = week_dates(2022)

    def day(w):
        return f"{dates[w - 1]:%Y-%m-%d}"

    seasons = {"nonbreeding": (41, 10), "prebreeding_migration": (11, 19), "breeding": (20, 31),
               "postbreeding_migration": (32, 40)}
    attrs = {f"{s}_{k}": day(w) for s, (a, b) in seasons.items() for k, w in (("start", a), ("end", b))}
    ds = make_bfdata(cube, x, y, "ESRI:102008", np.arange(1, 53), dates, species_code="columns",
                     version_year=2022, res_km=100.0, source="columns", attrs=attrs)
    P = np.eye(n_cols) * (1 - 2 * drift) + np.eye(n_cols, k=1) * drift + np.eye(n_cols, k=-1) * drift
    P[0, 0] += drift
    P[-1, -1] += drift
    index = WeekIndex.from_bfdata(ds)
    M = np.stack([P / n_cols for _ in range(52)])
    return BirdFlowModel(data=ds, index=index, marginals=M, hyperparameters={"truth": True})


@pytest.fixture(scope="module")
def columns(tmp_path_factory):
    truth = column_chain()
    path = write_tracks(sample_tracks(truth, 400, 1), tmp_path_factory.mktemp("col") / "t.csv")
    return truth, widen_transitions(truth, 2.0), load_tracks(path, truth.data)


def test_true_mc_is_inside_the_observed_interval_and_the_widened_mc_is_not(columns):
    truth, wide, tracks = columns
    got = {}
    for name, model in (("truth", truth), ("wide", wide)):
        res, notes = connectivity.connectivity(model, tracks.rows)
        assert not notes
        got[name] = {mig: e["by_source"]["all"] for mig, e in res.items()}
    for mig in ("prebreeding", "postbreeding"):
        t, w = got["truth"][mig], got["wide"][mig]
        lo, hi = t["observed_ci"]
        # measured (400 birds; 330 and 310 pairs): observed 0.665 [0.610, 0.718] prebreeding,
        # 0.642 [0.581, 0.698] postbreeding; the truth from the same origins 0.630 and 0.607;
        # twice as wide 0.213 and 0.195
        assert t["n_birds"] > 300 and t["observed"] > 0.5, t
        assert lo <= t["model"] <= hi and t["model_in_ci"], t
        assert w["model"] < lo and not w["model_in_ci"], w
        assert t["model_routes_ci"][0] < t["model"] < t["model_routes_ci"][1]


def test_range_wide_mc_of_the_column_chain(columns):
    truth, wide, _ = columns
    mc_true = connectivity.range_wide_mc(truth, "postbreeding")
    mc_wide = connectivity.range_wide_mc(wide, "postbreeding")
    assert mc_true["n_origin_cells"] == 8 and mc_true["origin_mass"] == pytest.approx(1.0)
    assert mc_true["mc"] > 0.6 > mc_wide["mc"], (mc_true, mc_wide)


def test_route_biology_tells_the_widened_chain_apart(flyway):
    truth, wide, tracks = flyway
    obs, sim_t, skipped = route_biology.route_biology(truth, tracks.rows, "postbreeding", n_routes=5)
    _, sim_w, _ = route_biology.route_biology(wide, tracks.rows, "postbreeding", n_routes=5)
    assert skipped == 0 and len(sim_t) == 5 * len(obs) and len(obs) > 100
    q_t = route_biology.compare_quantities(obs, sim_t)
    q_w = route_biology.compare_quantities(obs, sim_w)
    # the truth's routes fly like the birds (speed KS p > 0.01); twice as wide flies faster
    # and less straight, further from the tracks in Wasserstein-1
    assert q_t["speed_km_day"]["ks_p"] > 0.01, q_t["speed_km_day"]
    for q in ("speed_km_day", "straightness"):
        assert q_w[q]["wasserstein"] > 2 * q_t[q]["wasserstein"], (q, q_t[q], q_w[q])
    assert q_w["speed_km_day"]["median_model"] > q_t["speed_km_day"]["median_model"]


def test_measure_one_sequence_by_hand():
    ds = column_chain().data
    # cells 0, 0, 1, 1, 1, 2 (one row, 100 km apart) at weeks 0..5, days 0, 7, ..., 35
    cells, offsets = np.array([0, 0, 1, 1, 1, 2]), np.arange(6)
    m = route_biology.measure(cells, offsets, offsets * 7.0, ds)
    lon, lat = ds["cell_lon"].values, ds["cell_lat"].values
    step = great_circle_km(lon[0], lat[0], lon[1], lat[1])
    step2 = great_circle_km(lon[1], lat[1], lon[2], lat[2])
    assert m["speed_km_day"] == pytest.approx((step + step2) / 14.0)
    assert m["straightness"] == pytest.approx(great_circle_km(lon[0], lat[0], lon[2], lat[2])
                                              / (step + step2))
    assert (m["n_stopovers"], m["stopover_weeks"]) == (1.0, [3.0])  # the inner stay, weeks 2-4
    assert (m["departure_week"], m["arrival_week"]) == (1.0, 5.0)


def test_horizon_bins_and_useful_days_by_hand():
    from birdflow.evaluation import horizon

    # 20 intervals of 3 days gaining 1 +- 0.1 nats, 20 of 10 days gaining 0.5 +- 0.1,
    # 20 of 30 days gaining 0 +- 0.1, 3 of 400 days (too few to count)
    gains = np.r_[1 + 0.1 * np.tile([-1, 1], 10), 0.5 + 0.1 * np.tile([-1, 1], 10),
                  0.1 * np.tile([-1, 1], 10), [5, 5, 5]]
    days = np.r_[np.full(20, 3.0), np.full(20, 10.0), np.full(20, 30.0), np.full(3, 400.0)]
    scored = pd.DataFrame({"ll_gain": gains, "win_distance": 2 * gains, "elapsed_days": days,
                           "elapsed_km": days * 10})
    h = horizon.horizon(scored)
    by = {b["bin"]: b for b in h["days"]}
    assert by["0-7"]["n"] == 20 and by["0-7"]["gain"] == pytest.approx(1.0)
    # sd of +-0.1 around the mean with ddof 1: 0.1 sqrt(20/19); se = sd / sqrt(20)
    assert by["0-7"]["gain_se"] == pytest.approx(0.1 * np.sqrt(20 / 19) / np.sqrt(20))
    assert by["7-14"]["win_distance"] == pytest.approx(1.0) and by["14-21"]["n"] == 0
    assert by["365+"]["n"] == 3 and by["365+"]["hi"] is None
    # 0-7 and 7-14 beat the null, 28-42 does not: useful up to 14 days, a closed horizon
    assert (h["useful_days"], h["useful_days_open"]) == (14.0, False)
    assert horizon.useful_days(h["days"][:2]) == (14.0, True)  # the data end before the gain
    assert h["mean_gain"] == pytest.approx(gains.mean())


def test_target_support_keeps_the_heaviest_cells():
    psi = np.array([[0.5, 0.0, 0.3, 0.2], [0.1, 0.0, 0.1, 0.8]])
    support, sub, kept = connectivity.target_support(psi, max_cells=2)
    assert support.tolist() == [0, 3] and kept == pytest.approx((0.5 + 0.2 + 0.1 + 0.8) / 2)
    np.testing.assert_allclose(sub, [[0.5 / 0.7, 0.2 / 0.7], [0.1 / 0.9, 0.8 / 0.9]])
    assert connectivity.target_support(psi)[0].tolist() == [0, 2, 3]
