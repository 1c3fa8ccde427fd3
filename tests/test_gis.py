"""GIS-ready outputs (issue 14 item 4): GeoTIFFs and CF NetCDF read by rasterio/rioxarray/GDAL."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from conftest import independence_model, make_tiny_bfdata
from pyproj import CRS

from birdflow.export.gis import export_geotiffs
from birdflow.model.fitted import load_model, save_model

# make_tiny_bfdata: 4 x 5 cells of 100 km, column centres 5e4 + 1e5 k, row centres 3.5e6 - 1e5 k
EXPECTED_TRANSFORM = (1e5, 0.0, 0.0, 0.0, -1e5, 3.55e6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = independence_model(make_tiny_bfdata())
    # a model distribution that differs from S&T, so the two GeoTIFFs are told apart
    model.marginals = model.marginals ** 1.5
    model.marginals /= model.marginals.sum(axis=(1, 2), keepdims=True)
    out = tmp_path_factory.mktemp("run")
    save_model(model, out)
    export_geotiffs(model, out)
    return out, model


def test_geotiffs_have_crs_transform_band_dates_and_weeks_summing_to_one(run):
    out, model = run
    ds = model.data
    for name, want in (("tiny_model_distr.tif", model.distrs()),
                       ("tiny_st_distr.tif", ds["distr"].values)):
        with rasterio.open(out / name) as src:
            assert src.count == 52 and (src.height, src.width) == (4, 5)
            assert CRS.from_wkt(src.crs.to_wkt()).equals(CRS.from_wkt(ds.attrs["crs_wkt"]))
            assert tuple(src.transform)[:6] == pytest.approx(EXPECTED_TRANSFORM)
            assert src.descriptions[0] == "2022-01-04" and src.descriptions[51] == "2022-12-27"
            assert src.tags(10) == {"week": "10", "date": "2022-03-08"}
            cube = src.read()
        np.testing.assert_allclose(np.nansum(cube, axis=(1, 2)), 1.0, atol=1e-6)
        assert np.isnan(cube[:, 0, 0]).all()  # the no-data pixel outside the static mask
        rows, cols = ds["cell_row"].values, ds["cell_col"].values
        np.testing.assert_allclose(cube[:, rows, cols], want, rtol=1e-6)


def test_netcdf_files_are_cf_maps_that_rioxarray_reads(run):
    out, model = run
    ds = model.data
    for fname, var, want in (("data.nc", "distr_map", ds["distr"].values),
                             ("model.nc", "distr", model.distrs())):
        with xr.open_dataset(out / fname, decode_coords="all") as f:
            assert f.attrs["Conventions"] == "CF-1.8"
            da = f[var]
            assert da.dims == ("week", "y", "x")
            assert da.attrs["units"] == "1" and da.attrs["long_name"]
            assert da.encoding["grid_mapping"] == "spatial_ref"
            assert CRS.from_wkt(da.rio.crs.to_wkt()).equals(CRS.from_wkt(ds.attrs["crs_wkt"]))
            assert tuple(da.rio.transform())[:6] == pytest.approx(EXPECTED_TRANSFORM)
            assert f["x"].attrs["standard_name"] == "projection_x_coordinate"
            assert f["x"].attrs["units"] == "m"
            assert pd.Timestamp(f["date"].values[9]) == pd.Timestamp("2022-03-08")
            np.testing.assert_allclose(da.sum(("y", "x")).values, 1.0, atol=1e-6)
            cube = da.values
        rows, cols = ds["cell_row"].values, ds["cell_col"].values
        np.testing.assert_allclose(cube[:, rows, cols], want, rtol=1e-6)
    back = load_model(out)  # the CF additions do not change what is read back
    xr.testing.assert_identical(back.data, model.data)
    np.testing.assert_allclose(back.marginals, model.marginals, rtol=1e-6)


def test_gdalinfo_reads_the_geotiff_and_the_netcdf_maps(run):
    if shutil.which("gdalinfo") is None:
        if os.environ.get("CI") == "true":  # .ci/run installs gdal-bin: missing is a failure
            pytest.fail("gdalinfo not installed in CI (.ci/run installs Debian's gdal-bin)")
        pytest.skip("gdalinfo not installed (Debian: apt-get install gdal-bin)")
    out, _ = run
    tif = subprocess.run(["gdalinfo", "-stats", str(out / "tiny_model_distr.tif")],
                         capture_output=True, text=True, check=True).stdout
    assert "Size is 5, 4" in tif and "Band 52" in tif and "Description = 2022-12-27" in tif
    assert "North_America_Albers_Equal_Area_Conic" in tif and "Pixel Size = (100000" in tif
    for spec in (f'NETCDF:"{out / "data.nc"}":distr_map', f'NETCDF:"{out / "model.nc"}":distr'):
        nc = subprocess.run(["gdalinfo", spec], capture_output=True, text=True, check=True).stdout
        assert "Size is 5, 4" in nc and "Band 52" in nc, nc[:2000]
        assert "Origin = (0.000000000000000,3550000.000000000000000)" in nc
        assert "Albers" in nc


def test_export_command_writes_geotiffs(run, tmp_path, capsys):
    from conftest import run_command

    from birdflow.cli.export import main

    out, _ = run
    assert run_command(main, [f"run={out}", "format=geotiff", f"out={tmp_path}"]) == 0
    assert (tmp_path / "tiny_model_distr.tif").exists() and (tmp_path / "tiny_st_distr.tif").exists()
    assert run_command(main, [f"run={out}", "format=png"]) == 2
    assert "format='png'" in capsys.readouterr().err
