"""Predictions and routes by date or S&T week, forward and backward (issue 14 item 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_routes import cells_by_step, make_na_model, tv_bound

from birdflow.errors import ConfigError, DataError
from birdflow.evaluation.routes import sample_routes


@pytest.fixture(scope="module")
def na_model():
    return make_na_model()


def test_backward_prediction_from_mu_t2_recovers_mu_t1(na_model):
    m = na_model
    t1, t2 = 8, 29  # S&T weeks 9 and 30
    back = m.predict(m.distr_at(t2), t2 + 1, t1 + 1, direction="backward")
    assert back.sizes["time"] == t2 - t1 + 1
    assert back["week"].values.tolist() == list(range(t2 + 1, t1, -1))
    # The joints were computed in float32 (jax default), so consecutive joints agree on their
    # shared one-way marginal (column sums of M_t vs row sums of M_t+1) to ~1e-7 relative:
    # that is the float tolerance of the recovery. Exact arithmetic would give equality.
    for k in range(t2 - t1 + 1):  # every intermediate week is the model's own marginal
        np.testing.assert_allclose(back.values[k], m.distr_at(t2 - k), rtol=2e-6, atol=1e-12)
    fwd = m.predict(m.distr_at(t1), "2022-03-01", "2022-07-26")  # weeks 9 -> 30 by dates
    np.testing.assert_allclose(fwd.values[-1], m.distr_at(t2), rtol=2e-6, atol=1e-12)
    # each backward step conserves mass exactly (columns normalised)
    np.testing.assert_allclose(back.sum("cell").values, m.distr_at(t2).sum(), rtol=1e-13)


def test_backward_step_is_the_transposed_joint_normalised_by_columns(na_model):
    m = na_model
    j = int(np.argmax(m.distr_at(21)))
    one_hot = np.zeros(m.n_cells)
    one_hot[j] = 1.0
    got = m.predict(one_hot, 22, 21, direction="backward").values[-1]
    M = m.marginals[20]  # joint of weeks 21 -> 22, slot layout
    sf, st = m.index.slot_cell[20], m.index.slot_cell[21]
    col = int(np.flatnonzero(st == j)[0])
    want = np.zeros(m.n_cells)
    want[sf[sf >= 0]] = M[: (sf >= 0).sum(), col] / M[:, col].sum()
    np.testing.assert_allclose(got, want, atol=1e-15)


def test_backward_route_frequencies_match_the_marginals(na_model):
    m, n, t2, k = na_model, 20000, 29, 20
    df = sample_routes(m, n, start=t2 + 1, n_weeks=k, direction="backward", seed=5)
    cells = cells_by_step(df)  # time order: column 0 is week t2 - k + 1
    for step in range(k + 1):
        p = m.distr_at(t2 - k + step)
        freq = np.bincount(cells[:, step], minlength=m.n_cells) / n
        tv = 0.5 * np.abs(freq - p).sum()
        assert tv < tv_bound(p, n), (step, tv, tv_bound(p, n))


def test_route_table_has_birdflowr_columns_and_increasing_dates_across_new_year(na_model):
    fwd = na_model.route(3, "2022-12-13", "2023-01-25", from_marginals=True, seed=1)
    assert list(fwd.columns[:11]) == ["route_id", "i", "x", "y", "lon", "lat", "date", "timestep",
                                      "route_type", "stay_id", "stay_len"]
    r = fwd[fwd["route_id"] == 1]
    assert r["week"].tolist() == [50, 51, 52, 1, 2, 3, 4]
    assert pd.DatetimeIndex(r["date"]).is_monotonic_increasing
    assert pd.Timestamp(r["date"].iloc[-1]) == pd.Timestamp("2023-01-25")
    back = na_model.route(3, "2023-01-25", "2022-12-13", seed=1)  # dates imply backward
    rb = back[back["route_id"] == 1]
    assert rb["week"].tolist() == [50, 51, 52, 1, 2, 3, 4]  # rows in time order either way
    assert pd.DatetimeIndex(rb["date"]).is_monotonic_increasing
    assert (back["i"] >= 1).all() and (back["route_type"] == "synthetic").all()
    # stays: stay_id counts cell changes, stay_len = weeks from first to last point of a stay
    for _, g in fwd.groupby("route_id"):
        changes = np.r_[1, np.diff(g["i"].to_numpy()) != 0].cumsum()
        assert g["stay_id"].tolist() == changes.tolist()
        for _, stay in g.groupby("stay_id"):
            assert (stay["stay_len"] == len(stay) - 1).all()


def test_season_routes_cover_the_season_and_cross_new_year(na_model):
    from birdflow.data.seasons import infer_seasons, season_span

    na_model.data.attrs.update(infer_seasons(na_model.data))
    w0, w1 = season_span(na_model.data, "nonbreeding", buffer=1)
    assert w0 > w1  # the winter crosses new year
    df = sample_routes(na_model, 4, season="winter", seed=2)
    r = df[df["route_id"] == 1]
    assert r["week"].iloc[0] == w0 and r["week"].iloc[-1] == w1
    assert pd.DatetimeIndex(r["date"]).is_monotonic_increasing
    p = na_model.predict(na_model.distr_at(w0 - 1), season="nonbreeding")
    assert p.sizes["time"] == (w1 - w0) % 52 + 1 and int(p["week"][-1]) == w1
    assert pd.DatetimeIndex(p["date"].values).is_monotonic_increasing
    with pytest.raises(ConfigError, match="sets the start and end"):
        na_model.route(2, 10, season="breeding")


def test_predict_from_points_and_bad_input_one_liners(na_model):
    m = na_model
    ds = m.data
    c = [int(np.argmax(m.distr_at(9))), int(np.argsort(m.distr_at(9))[-5])]
    pts = [(float(ds["cell_lon"][i]), float(ds["cell_lat"][i])) for i in c]
    p = m.predict(pts, 10, n_steps=3)
    assert p.dims == ("time", "start", "cell") and p.shape == (4, 2, m.n_cells)
    assert p.values[0, 0, c[0]] == 1.0 and p.values[0, 1, c[1]] == 1.0
    np.testing.assert_allclose(p.sum("cell").values, 1.0, atol=1e-12)
    outside = int(np.flatnonzero(~ds["dynamic_mask"].values[9])[0])
    lonlat = (float(ds["cell_lon"][outside]), float(ds["cell_lat"][outside]))
    errors = []
    with pytest.raises(DataError, match="outside the model's mask in S&T week 10") as e:
        m.route(5, 10, 12, lonlat=lonlat)
    errors.append(str(e.value))
    truncated = make_na_model(n_weeks=20)
    with pytest.raises(ConfigError, match="outside the model's weeks 1..20") as e:
        truncated.predict(truncated.distr_at(0), "2022-08-01", n_steps=2)
    errors.append(str(e.value))
    with pytest.raises(ConfigError, match="imply backward") as e:
        m.predict(m.distr_at(5), "2022-03-01", "2022-02-01", direction="forward")
    errors.append(str(e.value))
    with pytest.raises(ConfigError, match="unknown season"):
        sample_routes(m, 2, season="monsoon")
    assert all("\n" not in msg for msg in errors)


def test_many_start_points_and_time_arguments(na_model):
    m, ds = na_model, na_model.data
    c = [int(np.argmax(m.distr_at(9))), int(np.argsort(m.distr_at(9))[-3])]
    pts = [(float(ds["cell_lon"][i]), float(ds["cell_lat"][i])) for i in c]
    df = m.route(3, 10, 14, lonlat=pts, seed=0)
    assert df["route_id"].nunique() == 6
    firsts = cells_by_step(df)[:, 0]
    assert firsts.tolist() == [c[0]] * 3 + [c[1]] * 3
    for bad, message in ((3.5, "whole numbers 1..52"), (60, "whole numbers 1..52"),
                         ("March 40th", "not a date")):
        with pytest.raises(ConfigError, match=message) as e:
            m.predict(m.distr_at(0), bad, n_steps=1)
        assert "\n" not in str(e.value)
    tl = m.timeline("2021-12-30", "2022-01-20")  # S&T weeks 52 -> 3, one year boundary
    assert tl.weeks.tolist() == [52, 1, 2, 3]
    assert [f"{d:%Y-%m-%d}" for d in tl.dates] == ["2021-12-27", "2022-01-04", "2022-01-11",
                                                   "2022-01-18"]


@pytest.mark.shared
def test_sstspa_routes_by_its_own_season_dates(sstspa_hdf5):
    from birdflow.export import import_birdflowr

    model = import_birdflowr(sstspa_hdf5)
    assert model.data.attrs["prebreeding_migration_start"]  # S&T season dates in the file
    df = model.route(10, season="prebreeding", seed=0)
    r = df[df["route_id"] == 1]
    assert pd.DatetimeIndex(r["date"]).is_monotonic_increasing and len(r) > 5
    back = model.predict(model.distr_at(int(r["timestep"].iloc[-1]) - 1), season="prebreeding",
                         direction="backward")
    assert int(back["week"][0]) == int(r["week"].iloc[-1])
    assert int(back["week"][-1]) == int(r["week"].iloc[0])


def test_public_methods_speak_weeks_and_dates_not_positions(na_model):
    """distr/transition/marginal take a 1-based S&T week or a date; *_at take positions."""
    m = na_model
    week = int(m.data["week"].values[9])
    date = str(np.datetime_as_string(m.data["date"].values[9], unit="D"))
    np.testing.assert_array_equal(m.distr(week), m.distr_at(9))
    np.testing.assert_array_equal(m.distr(date), m.distr_at(9))
    np.testing.assert_array_equal(m.transition(week), m.transition_at(9))
    np.testing.assert_array_equal(m.marginal(date), m.marginal_at(9))
    with pytest.raises(ConfigError, match="when=0"):
        m.distr(0)
