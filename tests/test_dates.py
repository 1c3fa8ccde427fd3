"""Issue 13 item 6: a truncated season that crosses new year has increasing dates everywhere."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
from conftest import independence_model, make_tiny_bfdata

from birdflow.data.bfdata import load_bfdata, save_bfdata
from birdflow.data.weeks import increasing_dates, week_dates
from birdflow.export.hdf5_write import export_birdflowr

WINTER = np.r_[45:53, 1:11]  # S&T weeks 45..52, 1..10


def winter_bfdata():
    full = make_tiny_bfdata(n_weeks=52)
    from birdflow.data.bfdata import make_bfdata

    cube = np.full((len(WINTER), full.sizes["y"], full.sizes["x"]), np.nan)
    rows, cols = full["cell_row"].values, full["cell_col"].values
    cube[:, rows, cols] = full["distr"].values[WINTER - 1]
    return make_bfdata(cube, full["x"].values, full["y"].values, full.rio.crs, WINTER,
                       week_dates(2022)[WINTER - 1], species_code="tiny", version_year=2022,
                       res_km=100.0, source="tiny-winter")


def test_increasing_dates_moves_january_into_the_next_year():
    got = increasing_dates(week_dates(2022)[WINTER - 1])
    assert got[0] == pd.Timestamp("2022-11-08") and got[8] == pd.Timestamp("2023-01-04")
    assert got.is_monotonic_increasing
    back = increasing_dates(week_dates(2022)[[1, 0, 51]], direction=-1)
    assert list(back) == [pd.Timestamp("2022-01-11"), pd.Timestamp("2022-01-04"),
                          pd.Timestamp("2021-12-27")]


def test_season_across_new_year_has_increasing_dates_in_data_and_export(tmp_path):
    ds = winter_bfdata()
    dates = pd.DatetimeIndex(ds["date"].values)
    assert dates.is_monotonic_increasing and dates[-1] == pd.Timestamp("2023-03-08")
    save_bfdata(ds, tmp_path / "data.nc")
    assert pd.DatetimeIndex(load_bfdata(tmp_path / "data.nc")["date"].values).is_monotonic_increasing
    model = independence_model(ds)
    assert not model.cyclic
    path = export_birdflowr(model, tmp_path / "winter.hdf5")
    with h5py.File(path, "r") as f:
        written = pd.DatetimeIndex([d.decode() for d in f["dates"]["date"]])
        assert list(f["dates"]["week"]) == WINTER.tolist()
    assert written.is_monotonic_increasing and written[-1] == pd.Timestamp("2023-03-08")


def test_routes_and_predictions_on_the_winter_model_run_with_time():
    model = independence_model(winter_bfdata())
    df = model.route(4, 45, 10, from_marginals=True, seed=0)
    r = df[df["route_id"] == 1]
    assert r["week"].tolist() == WINTER.tolist() and r["timestep"].tolist() == list(range(1, 19))
    assert pd.DatetimeIndex(r["date"]).is_monotonic_increasing
    assert pd.Timestamp(r["date"].iloc[-1]) == pd.Timestamp("2023-03-08")
    back = model.predict(model.distr_at(17), "2023-03-08", "2022-11-08")  # dates imply backward
    assert pd.DatetimeIndex(back["date"].values).is_monotonic_decreasing
    np.testing.assert_allclose(back.values[-1], model.distr_at(0), atol=1e-12)
