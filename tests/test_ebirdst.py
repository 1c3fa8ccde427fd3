"""Reading S&T weekly abundance GeoTIFFs: layout, nodata, band dates, the real amewoo file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from affine import Affine

from birdflow.data.ebirdst import (
    bound_paths,
    normalize_source_res,
    read_st_raster,
    st_raster_path,
    write_st_raster,
)
from birdflow.data.weeks import week_dates
from birdflow.errors import ConfigError, DataError

LAEA = "+proj=laea +lat_0=30 +lon_0=-95 +x_0=5500000 +y_0=9500000 +datum=WGS84 +units=m"


def test_layout_matches_the_ebirdst_tools(tmp_path):
    p = st_raster_path(tmp_path, "barswa", 2022, "27km")
    assert p == tmp_path / "2022/barswa/weekly/barswa_abundance_median_27km_2022.tif"
    assert st_raster_path(tmp_path, "barswa", 2022, 9, "upper").name == \
        "barswa_abundance_upper_9km_2022.tif"
    assert normalize_source_res("3") == "3km"
    with pytest.raises(ConfigError, match="source_res=.*3km, 9km, 27km"):
        normalize_source_res("10km")
    with pytest.raises(ConfigError, match="metric"):
        st_raster_path(tmp_path, "barswa", 2022, "27km", "mean")


def test_bounds_found_beside_the_median(tmp_path):
    median = st_raster_path(tmp_path, "x", 2022, "27km")
    cube = np.ones((52, 2, 2))
    for metric in ("median", "upper"):
        write_st_raster(st_raster_path(tmp_path, "x", 2022, "27km", metric), cube,
                        Affine(1e4, 0, 0, 0, -1e4, 2e4), LAEA)
    assert bound_paths(median) == {"upper": st_raster_path(tmp_path, "x", 2022, "27km", "upper")}


def test_sentinel_nodata_becomes_nan_and_weeks_follow_the_bands(tmp_path):
    rng = np.random.default_rng(1)
    cube = rng.random((52, 3, 4))
    cube[:, 0, 0] = np.nan
    path = write_st_raster(tmp_path / "s_2022.tif", cube, Affine(2e4, 0, 1e5, 0, -2e4, 9e5), LAEA,
                           nodata=-3.4e38)
    da = read_st_raster(path)
    assert da.dims == ("week", "y", "x") and da.dtype == np.float64
    assert np.isnan(da.values[:, 0, 0]).all() and not np.isnan(da.values[:, 1:, :]).any()
    np.testing.assert_allclose(da.values[:, 1:], cube[:, 1:].astype(np.float32))
    assert da.week.values.tolist() == list(range(1, 53))
    assert (pd.DatetimeIndex(da.date.values) == week_dates(2022)).all()  # year from the name
    np.testing.assert_allclose(da.x.values, 1e5 + 2e4 * (np.arange(4) + 0.5))
    np.testing.assert_allclose(da.y.values, 9e5 - 2e4 * (np.arange(3) + 0.5))
    assert da.rio.crs is not None and da.rio.transform() == Affine(2e4, 0, 1e5, 0, -2e4, 9e5)


def test_band_dates_in_descriptions_order_the_weeks(tmp_path):
    cube = np.arange(52, dtype=float)[:, None, None] * np.ones((52, 2, 2))  # band value = index
    dates = week_dates(2021)
    order = np.random.default_rng(0).permutation(52)
    path = write_st_raster(tmp_path / "nodate.tif", cube[order], Affine(1e4, 0, 0, 0, -1e4, 2e4),
                           LAEA, dates=dates[order])
    da = read_st_raster(path)
    assert da.week.values.tolist() == list(range(1, 53))
    np.testing.assert_array_equal(da.values[:, 0, 0], np.arange(52))  # reordered by date
    assert (pd.DatetimeIndex(da.date.values) == dates).all()


def test_south_up_grid_is_flipped(tmp_path):
    cube = np.zeros((52, 2, 1))
    cube[:, 0, 0] = 1.0  # first stored row = the southern one
    path = write_st_raster(tmp_path / "flip_2022.tif", cube, Affine(1e4, 0, 0, 0, 1e4, 0), LAEA)
    da = read_st_raster(path)
    assert da.y.values[0] > da.y.values[1]
    assert (da.values[:, 1, 0] == 1).all() and (da.values[:, 0, 0] == 0).all()


def test_no_dates_and_no_year_asks_for_version_year(tmp_path):
    path = write_st_raster(tmp_path / "cube.tif", np.ones((52, 2, 2)),
                           Affine(1e4, 0, 0, 0, -1e4, 2e4), LAEA)
    with pytest.raises(DataError, match=r"cube\.tif.*pass version_year"):
        read_st_raster(path)
    assert read_st_raster(path, version_year=2023).date.values[0] == np.datetime64("2023-01-04")


@pytest.mark.shared
def test_real_amewoo_raster(amewoo_tif):
    da = read_st_raster(amewoo_tif)
    # expected numbers: ../shared/data/README.md (45 x 51 grid, 589 sentinel cells in every band,
    # values 0..2.64, band totals 4.1..270.6, Mollweide)
    assert da.shape == (52, 45, 51)
    nan = np.isnan(da.values)
    assert (nan.sum(axis=(1, 2)) == 589).all() and (nan == nan[0]).all()
    valid = da.values[~nan]
    assert valid.min() == 0.0 and 2.63 < valid.max() < 2.65
    totals = np.nansum(da.values, axis=(1, 2))
    assert 4.0 < totals.min() < 4.2 and 270.5 < totals.max() < 270.7
    assert "moll" in da.rio.crs.to_proj4()
    assert da.date.values[0] == np.datetime64("2019-01-04")  # year from the file name
