"""Routes sampled from a small migratory chain over North America (Americas LAEA grid)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import run_command

from birdflow.cli.routes import main
from birdflow.data.bfdata import make_bfdata
from birdflow.data.grid import great_circle_km
from birdflow.data.weeks import week_dates
from birdflow.errors import ConfigError, DataError
from birdflow.evaluation.routes import forecast, route_stats, sample_routes, write_routes
from birdflow.model import markov
from birdflow.model.fitted import BirdFlowModel, save_model

AMERICAS_LAEA = ("+proj=laea +lat_0=30 +lon_0=-95 +x_0=5500000 +y_0=9500000 "
                 "+datum=WGS84 +units=m +no_defs")


def make_na_bfdata(n_weeks: int = 52):
    """12 x 14 cells of 100 km (edges at multiples of 100 km) around the Gulf coast, ~25-38 N.

    A blob of abundance sits in the south in winter and moves ~1000 km north for summer;
    cells where it is negligible are masked out of that week.
    """
    x = 4.9e6 + 1e5 * np.arange(12) + 5e4
    y = 10.4e6 - 1e5 * np.arange(14) - 5e4
    weeks = np.arange(1, n_weeks + 1)
    north = 0.5 - 0.5 * np.cos(2 * np.pi * (weeks - 4) / 52)  # 0 in early Jan, 1 in early Jul
    cy = 9.25e6 + 1.0e6 * north
    xx, yy = np.meshgrid(x, y)
    a = np.exp(-(((xx - 5.5e6) / 3.5e5) ** 2)[None] - ((yy[None] - cy[:, None, None]) / 3e5) ** 2)
    a[a < 0.02] = 0.0
    return make_bfdata(a, x, y, AMERICAS_LAEA, weeks, week_dates(2022)[:n_weeks],
                       species_code="tstspc", version_year=2022, res_km=100.0, source="na-test")


def make_na_model(n_weeks: int = 52) -> BirdFlowModel:
    """A chain whose weekly moves follow the blob.

    Logits of i -> j: -|step - drift|^2 / (2 (70 km)^2) + log S&T(j, next week), so the
    marginals stay close to the S&T weeks (a hand-made stand-in for a trained model).
    """
    ds = make_na_bfdata(n_weeks)
    index = markov.WeekIndex.from_bfdata(ds)
    cx, cy = ds["cell_x"].values, ds["cell_y"].values
    cells = np.where(index.valid, index.slot_cell, 0)
    north = 0.5 - 0.5 * np.cos(2 * np.pi * (ds["week"].values - 4) / 52)
    drift = np.diff(np.r_[north, north[:1]] * 1.0e6)[: index.n_transitions]
    Z = np.empty((index.n_transitions, index.n_max, index.n_max))
    for t in range(index.n_transitions):
        a, b = cells[t], cells[(t + 1) % index.n_weeks]
        dx = cx[b][None, :] - cx[a][:, None]
        dy = cy[b][None, :] - cy[a][:, None] - drift[t]
        target = np.log(np.maximum(ds["distr"].values[(t + 1) % index.n_weeks, b], 1e-30))
        Z[t] = -(dx**2 + dy**2) / (2 * 0.7e5**2) + target[None, :]
    d0 = index.slot_values(ds["distr"].values)[0]
    params = {"z0": jnp.asarray(np.log(np.maximum(d0, 1e-30))), "Z": jnp.asarray(Z)}
    _, M = markov.marginals(params, index)
    return BirdFlowModel(data=ds, index=index, marginals=np.asarray(M, np.float64),
                         hyperparameters={"obs_weight": 1.0, "ent_weight": 1e-4, "dist_weight": 1e-2,
                                          "location_loss": "l2", "rng_seed": 0},
                         loss_history={"total": np.geomspace(2.0, 0.1, 30), "obs": np.geomspace(1.5, 0.05, 30),
                                       "dist": np.linspace(0.3, 0.2, 30), "ent": -np.linspace(0.01, 0.02, 30)})


@pytest.fixture(scope="module")
def na_model() -> BirdFlowModel:
    return make_na_model()


def cells_by_step(df: pd.DataFrame) -> np.ndarray:
    """(n_routes, n_positions) 0-based cells in time order from a route table."""
    n = df["route_id"].nunique()
    return (df.sort_values(["route_id", "date"], kind="stable")["i"].to_numpy() - 1).reshape(n, -1)


def tv_bound(p: np.ndarray, n: int) -> float:
    """1.2 B with B = 0.5 sum_i sd(freq_i) = 0.5 sum sqrt(p (1 - p) / n).

    E[TV] ~ sqrt(2 / pi) B = 0.8 B (mean absolute deviation of a near-normal count) with a
    spread of a few % of B over ~100 cells, so 1.2 B is far out. Sampling one week off gives
    ~1.9 B here.
    """
    return 1.2 * 0.5 * np.sqrt(p * (1 - p) / n).sum()


def test_weekly_frequencies_match_model_marginals(na_model):
    n, t0, k = 20000, 8, 20  # S&T weeks 9..29: spring migration
    df = sample_routes(na_model, n, start_week=t0 + 1, n_weeks=k, seed=1)
    assert len(df) == n * (k + 1)
    expected = na_model.forecast_at(na_model.distr_at(t0), t0, k)
    cells = cells_by_step(df)
    for step in range(k + 1):
        freq = np.bincount(cells[:, step], minlength=na_model.n_cells) / n
        p = expected[step]
        tv = 0.5 * np.abs(freq - p).sum()
        assert tv < tv_bound(p, n), (step, tv, tv_bound(p, n))
        # before the year wraps, the projection is the model's own marginal of that week
        np.testing.assert_allclose(expected[step], na_model.distr_at(t0 + step), atol=1e-6)


def test_routes_stay_inside_dynamic_masks_and_wrap_the_year(na_model):
    df = sample_routes(na_model, 300, start_week=40, n_weeks=30, seed=2)
    pos = df["week"].to_numpy() - 1
    assert na_model.data["dynamic_mask"].values[pos, df["i"].to_numpy() - 1].all()
    r1 = df[df["route_id"] == 1]
    assert r1["week"].tolist() == [((39 + s) % 52) + 1 for s in range(31)]
    assert pd.DatetimeIndex(r1["date"]).is_monotonic_increasing  # +1 year after week 52
    assert pd.Timestamp(r1["date"].iloc[-1]).year == 2023


def test_start_lonlat_starts_every_route_in_that_cell(na_model):
    ds = na_model.data
    c = int(np.argmax(na_model.distr_at(0)))
    lon, lat = float(ds["cell_lon"][c]) + 0.2, float(ds["cell_lat"][c]) - 0.2
    df = sample_routes(na_model, 50, start_week=1, n_weeks=3, start_lonlat=(lon, lat))
    assert (cells_by_step(df)[:, 0] == c).all()
    with pytest.raises(DataError, match="not in an active cell"):
        sample_routes(na_model, 5, 1, 3, start_lonlat=(10.0, 50.0))
    with pytest.raises(ConfigError, match="start=60"):
        sample_routes(na_model, 5, 60, 3)


def test_truncated_model_refuses_to_run_past_its_last_week():
    model = make_na_model(n_weeks=20)
    assert not model.cyclic
    assert sample_routes(model, 3, 5, 15)["week"].max() == 20
    with pytest.raises(ConfigError, match="run past the model's weeks 1..20"):
        sample_routes(model, 3, 5, 16)


def test_route_stats_on_a_hand_made_route():
    # cells 0 0 | 1 | 2 2 2 | 1 | 3 3 along a meridian: stays of 2, 1, 3, 1, 2 weeks
    cells = [0, 0, 1, 2, 2, 2, 1, 3, 3]
    lat_of = {0: 30.0, 1: 31.0, 2: 32.0, 3: 29.0}
    df = pd.DataFrame({"route_id": 7, "week": range(10, 19),
                       "date": week_dates(2022)[9:18], "i": cells, "x": 0.0, "y": 0.0,
                       "lon": -90.0, "lat": [lat_of[c] for c in cells]})
    per, summary = route_stats(df)
    r = per.loc[7]
    km_per_deg = great_circle_km(-90, 0, -90, 1)  # 111.195 km on R = 6371.01 km
    assert r["distance_km"] == pytest.approx((1 + 1 + 1 + 2) * km_per_deg)  # 30->31->32->31->29
    assert r["displacement_km"] == pytest.approx(1 * km_per_deg)  # 30 -> 29
    assert r["straightness"] == pytest.approx(1 / 5)
    assert r["n_moves"] == 4 and r["n_stays"] == 5
    assert r["n_stopovers"] == 1 and r["stopover_weeks"] == "3"  # inner stays 1, 3, 1
    assert r["departure_week"] == 11  # first move leaves the position of week 11 (step 1)
    assert r["arrival_week"] == 17  # last move reaches week 17 (step 7)
    assert summary["n_routes"] == 1 and summary["frac_with_stopover"] == 1.0


def test_forecast_is_a_projected_one_hot(na_model):
    c = int(np.argmax(na_model.distr_at(10)))
    lon, lat = float(na_model.data["cell_lon"][c]), float(na_model.data["cell_lat"][c])
    f = forecast(na_model, lon, lat, "2022-03-15", 4)  # 15 March is in S&T week 11
    assert f.shape == (5, na_model.n_cells)
    np.testing.assert_allclose(f.sum(axis=1), 1.0, atol=1e-9)
    assert f[0, c] == 1.0
    P = [na_model.transition_at(t) for t in range(10, 14)]
    np.testing.assert_allclose(f[4], f[0] @ P[0] @ P[1] @ P[2] @ P[3], atol=1e-12)
    assert not f[4][~na_model.data["dynamic_mask"].values[14]].any()


def test_write_routes_and_cli(na_model, tmp_path, capsys):
    df = sample_routes(na_model, 4, 1, 5)
    write_routes(df, tmp_path / "r.csv", tmp_path / "r.geojson")
    back = pd.read_csv(tmp_path / "r.csv", parse_dates=["date"])
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    gj = json.loads((tmp_path / "r.geojson").read_text())
    assert len(gj["features"]) == 4
    f0 = gj["features"][0]
    assert f0["geometry"]["type"] == "LineString" and len(f0["geometry"]["coordinates"]) == 6
    assert f0["properties"]["dates"][0] == "2022-01-04"

    run = tmp_path / "run"
    save_model(na_model, run)
    (run / "run.json").write_text(json.dumps({"species": "tstspc", "loss": "l2", "status": "finished"}))
    summary = main([f"run={run}", "n=20", "start_week=10", "weeks=12", "seed=3"])
    assert summary["n_routes"] == 20
    for name in ("routes.csv", "routes.geojson", "route_stats.csv"):
        assert (run / name).stat().st_size > 0
    assert len(pd.read_csv(run / "route_stats.csv")) == 20
    assert "mean_distance_km" in capsys.readouterr().out
    assert run_command(main, [f"run={run}", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_dates_direction_season_points_and_bad_input(na_model, tmp_path, capsys):
    from birdflow.data.seasons import infer_seasons

    run = tmp_path / "run"
    model = make_na_model()
    model.data.attrs.update(infer_seasons(model.data))
    save_model(model, run)
    (run / "run.json").write_text(json.dumps({"species": "tstspc", "loss": "l2", "status": "finished"}))
    main([f"run={run}", "n=3", "start=2022-12-13", "end=2022-11-29", "seed=1"])  # backward
    df = pd.read_csv(run / "routes.csv", parse_dates=["date"])
    assert list(df.columns[:11]) == ["route_id", "i", "x", "y", "lon", "lat", "date", "timestep",
                                     "route_type", "stay_id", "stay_len"]
    assert df[df["route_id"] == 1]["week"].tolist() == [48, 49, 50]
    points = json.loads((run / "routes_points.geojson").read_text())["features"]
    assert len(points) == 9 and points[0]["properties"]["time"] == "2022-11-29"
    main([f"run={run}", "n=2", "season=winter", "start_from=st"])
    winter = pd.read_csv(run / "routes.csv", parse_dates=["date"])
    assert pd.DatetimeIndex(winter["date"][winter["route_id"] == 1]).is_monotonic_increasing
    c = [int(np.argmax(model.distr_at(4))), int(np.argsort(model.distr_at(4))[-4])]
    lons = ",".join(f"{float(model.data['cell_lon'][i]):.4f}" for i in c)
    lats = ",".join(f"{float(model.data['cell_lat'][i]):.4f}" for i in c)
    main([f"run={run}", "n=2", "start=5", "weeks=2", f"lon=[{lons}]", f"lat=[{lats}]"])
    starts = pd.read_csv(run / "routes.csv").groupby("route_id")["i"].first().tolist()
    assert starts == [c[0] + 1] * 2 + [c[1] + 1] * 2
    capsys.readouterr()
    for args, words in ((["end=60"], "whole numbers 1..52"), (["lon=10", "lat=50"], "not in an active"),
                        (["start=2022-03-01", "end=2022-02-01", "direction=forward"], "imply backward"),
                        (["start_from=prior"], "start_from")):
        assert run_command(main, [f"run={run}", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_median_week_crosses_new_year():
    """A winter season's departures in weeks 50-52 and 1-3 have their median at the turn of
    the year, not in mid-summer (the plain median of 50, 51, 52, 1, 2, 3, 3 is 3)."""
    from birdflow.evaluation.routes import median_week

    assert median_week(np.array([50, 51, 52, 1, 2, 3, 3])) == 1.0
    assert median_week(np.array([10, 12, 14])) == 12.0
    assert median_week(np.array([51, 52, 52, 1])) == 52.0
    assert median_week(np.array([])) is None
