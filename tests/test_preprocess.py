"""S&T raster -> BirdFlowData: aggregation, reprojection, budget, clip, trim, season, cache, CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer

from birdflow.data.bfdata import load_bfdata, n_parameters, save_bfdata
from birdflow.data.ebirdst import st_raster_path, write_st_raster
from birdflow.data.preprocess import AMERICAS_LAEA, load_or_preprocess, preprocess
from birdflow.data.resolution import (
    MAX_PARAMS_PER_GB,
    clean_ladder,
    clean_resolution,
    max_params_for,
)

REPO = Path(__file__).resolve().parents[1]


def species_cfg(**kw) -> dict:
    base = dict(code="tst", common_name="Test bird", scientific_name="Avis testis", version_year=2022,
                source_res="27km", raster=None, res_km=100, max_params=None, gpu_ram_gb=12, crs=None,
                clip=None, trim_quantile=None, start_week=1, end_week=52, tracks=None)
    return {**base, **kw}


def blob_cube(nrow=12, ncol=14, seed=0) -> np.ndarray:
    """(52, nrow, ncol) abundance: a blob that moves east over the year, zero elsewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:nrow, 0:ncol]
    cube = np.zeros((52, nrow, ncol))
    for t in range(52):
        cx = 3 + (ncol - 7) * (0.5 - 0.5 * np.cos(2 * np.pi * t / 52))
        d2 = (xx - cx) ** 2 + (yy - nrow / 2) ** 2
        cube[t] = np.where(d2 < 9, np.exp(-d2 / 6) * (1 + 0.1 * rng.random((nrow, ncol))), 0.0)
    return cube


def laea_tif(tmp_path, cube, res_km=50.0, x0_cells=100, y0_cells=200, name="tst_2022.tif") -> Path:
    """GeoTIFF in the default CRS on a grid aligned to ``res_km`` (like the synthetic species)."""
    r = res_km * 1000
    return write_st_raster(tmp_path / name, cube, Affine(r, 0, x0_cells * r, 0, -r, y0_cells * r),
                           AMERICAS_LAEA)


def test_aligned_source_is_block_averaged_without_resampling(tmp_path):
    cube = blob_cube(nrow=11, ncol=13)  # odd sizes: the grid needs padding to 100 km multiples
    path = laea_tif(tmp_path, cube, x0_cells=101, y0_cells=201)  # 50 km cells, odd offset
    ds = preprocess(species_cfg(raster=str(path)), {"root": str(tmp_path)})
    # expected by hand: pad one 50 km column west and one row north, then 2x2 means
    padded = np.pad(cube.astype(np.float32).astype(float), ((0, 0), (1, 0), (1, 0)))
    blocks = padded.reshape(52, 6, 2, 7, 2).mean(axis=(2, 4))
    static = (blocks > 0).any(axis=0)
    rows, cols = np.nonzero(static)
    r0, c0 = rows.min(), cols.min()
    expected = blocks[:, static] / blocks[:, static].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ds["distr"].values, expected, rtol=1e-12)
    assert (np.diff(ds.x.values) == 1e5).all() and (ds.x.values % 1e5 == 5e4).all()
    assert ds.x.values[0] == 100 * 50e3 + c0 * 1e5 + 5e4 and ds.y.values[0] == 201 * 50e3 + 50e3 - r0 * 1e5 - 5e4
    assert ds.attrs["common_name"] == "Test bird" and len(ds.attrs["preprocess_hash"]) == 8


def test_reprojection_from_another_crs_keeps_mass_and_aligns_the_grid(tmp_path):
    cube = blob_cube()
    t = Affine(0.25, 0, -100.0, 0, -0.25, 45.0)  # quarter-degree lon/lat grid
    path = write_st_raster(tmp_path / "geo_2022.tif", cube, t, "EPSG:4326", nodata=-3.4e38)
    ds = preprocess(species_cfg(raster=str(path), res_km=60), {"root": str(tmp_path)})
    assert ds.sizes["week"] == 52 and ds.attrs["cyclic"] == 1
    np.testing.assert_allclose(ds["distr"].sum("cell"), 1.0)
    assert np.allclose(ds.x.values % 60e3, 30e3) and np.allclose(ds.y.values % 60e3, 30e3)
    # every active cell lies near the source blob (lon -100..-96.5, lat 42..45)
    assert ds.cell_lon.min() > -100.5 and ds.cell_lon.max() < -96 and ds.cell_lat.min() > 41.5


def test_resolution_from_a_parameter_budget(tmp_path):
    path = laea_tif(tmp_path, blob_cube(), res_km=10.0)
    budget = 6000
    cfg = species_cfg(raster=str(path), res_km=None, max_params=budget)
    ds = preprocess(cfg, {"root": str(tmp_path)})
    res = ds.attrs["res_km"]
    n = n_parameters(ds["dynamic_mask"].values)
    assert res == clean_resolution(res) and n <= budget
    assert res > 10  # not the search's lower bound (the 10 km source)
    ladder = clean_ladder(10)
    finer = ladder[np.flatnonzero(ladder == res)[0] - 1]  # the next finer clean resolution
    ds_finer = preprocess({**cfg, "res_km": finer}, {"root": str(tmp_path)})
    assert n_parameters(ds_finer["dynamic_mask"].values) > budget  # so res is the finest that fits


def test_clean_resolution_and_budget_rules():
    # step rule of BirdFlowR determine_resolution() (reference §1.4 step 5)
    assert [clean_resolution(v) for v in (2.31, 3.2, 7.01, 299.2, 301, 601)] == [2.4, 3.5, 8, 300, 305, 610]
    assert max_params_for({"max_params": None, "gpu_ram_gb": 12}) == 12 * MAX_PARAMS_PER_GB
    assert max_params_for({"max_params": 1000, "gpu_ram_gb": 12}) == 1000


def test_round_trip_netcdf_is_identical(tmp_path):
    path = laea_tif(tmp_path, blob_cube())
    ds = preprocess(species_cfg(raster=str(path), res_km=100, trim_quantile=0.9), {"root": str(tmp_path)})
    out = save_bfdata(ds, tmp_path / "rt.nc")
    back = load_bfdata(out)
    xr.testing.assert_identical(back, ds)
    assert CRS.from_wkt(back.rio.crs.to_wkt()).equals(CRS.from_wkt(ds.attrs["crs_wkt"]))
    assert CRS.from_wkt(ds.attrs["crs_wkt"]).equals(CRS.from_user_input(AMERICAS_LAEA))


def test_cache_is_reused_and_keyed_by_options(tmp_path, caplog):
    path = laea_tif(tmp_path, blob_cube())
    data = {"root": str(tmp_path / "data")}
    ds1, p1 = load_or_preprocess(species_cfg(raster=str(path)), data)
    assert p1.parent == tmp_path / "data" / "processed" and p1.name.startswith("tst_2022_100km_")
    with caplog.at_level(logging.INFO, logger="birdflow.data.preprocess"):
        ds2, p2 = load_or_preprocess(species_cfg(raster=str(path)), data)
    assert p2 == p1 and "using cached" in caplog.text
    xr.testing.assert_identical(ds1, ds2)
    _, p3 = load_or_preprocess(species_cfg(raster=str(path), trim_quantile=0.95), data)
    assert p3 != p1 and p3.exists()


def test_budget_chosen_resolution_is_cached(tmp_path):
    path = laea_tif(tmp_path, blob_cube(), res_km=10.0)
    cfg, data = species_cfg(raster=str(path), res_km=None, max_params=6000), {"root": str(tmp_path)}
    ds, p = load_or_preprocess(cfg, data)
    assert p.name.startswith(f"tst_2022_{ds.attrs['res_km']:g}km_")
    assert load_or_preprocess(cfg, data)[1] == p


def test_clip_zeroes_outside_and_records_percent_lost(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    cube = blob_cube()
    path = laea_tif(tmp_path, cube)
    # keep the raster's 9 western columns (x < 100 cells * 50 km + 9 cells * 50 km): every week
    # keeps part of the blob
    xcut = 100 * 50e3 + 9 * 50e3
    poly = gpd.GeoDataFrame(geometry=[box(4e6, 9e6, xcut, 1.1e7)], crs=AMERICAS_LAEA).to_crs("EPSG:4326")
    clip = tmp_path / "west.geojson"
    poly.to_file(clip, driver="GeoJSON")
    ds = preprocess(species_cfg(raster=str(path), res_km=50, clip=str(clip)), {"root": str(tmp_path)})
    assert ds.cell_x.max() < xcut and ds.attrs["clip"] == "west.geojson"
    c = cube.astype(np.float32).astype(float)
    expected = 100 * c[:, :, 9:].sum(axis=(1, 2)) / c.sum(axis=(1, 2))  # aligned 50 km: exact
    np.testing.assert_allclose(ds["percent_lost"].values, expected, atol=1e-6)


def test_trim_quantile_caps_each_week(tmp_path):
    path = laea_tif(tmp_path, blob_cube())
    plain = preprocess(species_cfg(raster=str(path)), {"root": str(tmp_path)})
    trimmed = preprocess(species_cfg(raster=str(path), trim_quantile=0.8), {"root": str(tmp_path)})
    for t in (0, 20, 40):
        d = plain["distr"].values[t]
        q = np.quantile(d[d > 0], 0.8)  # numpy linear = R type 7
        want = np.minimum(d, q) / np.minimum(d, q).sum()
        np.testing.assert_allclose(trimmed["distr"].values[t], want, rtol=1e-12)
    np.testing.assert_array_equal(trimmed["totals"].values, plain["totals"].values)
    np.testing.assert_array_equal(trimmed["dynamic_mask"].values, plain["dynamic_mask"].values)


def test_wrapped_season_keeps_only_its_weeks(tmp_path):
    path = laea_tif(tmp_path, blob_cube())
    ds = preprocess(species_cfg(raster=str(path), start_week=45, end_week=10), {"root": str(tmp_path)})
    assert ds.week.values.tolist() == list(range(45, 53)) + list(range(1, 11))
    assert ds.attrs["cyclic"] == 0
    assert str(ds.date.values[0])[:10] == "2022-11-08"  # week 45 centre: day 4 + 7 * 44 = 312


def test_lower_upper_bounds_share_the_median_totals(tmp_path):
    cube = blob_cube()
    for metric, f in (("median", 1.0), ("lower", 0.5), ("upper", 2.0)):
        write_st_raster(st_raster_path(tmp_path / "raw", "tst", 2022, "27km", metric), cube * f,
                        Affine(5e4, 0, 5e6, 0, -5e4, 1e7), AMERICAS_LAEA)
    ds = preprocess(species_cfg(raster=None), {"root": str(tmp_path), "download": False})
    np.testing.assert_allclose(ds["uci"].values, 2 * ds["distr"].values, rtol=1e-6)
    np.testing.assert_allclose(ds["lci"].values, 0.5 * ds["distr"].values, rtol=1e-6)


def test_synthetic_species_goes_through_ensure_synthetic(tmp_path, monkeypatch):
    path = laea_tif(tmp_path, blob_cube(), name="generated.tif")
    calls = []

    def fake_ensure(species_cfg, out_dir):
        calls.append(Path(out_dir))
        return types.SimpleNamespace(raster=path, tracks=None, truth=None)

    import birdflow.synthetic as synthetic

    monkeypatch.setattr(synthetic, "ensure_synthetic", fake_ensure)
    ds = synthetic.preprocess(species_cfg(code="synthetic"), {"root": str(tmp_path / "d")})
    assert calls == [tmp_path / "d" / "synthetic"] and ds.attrs["species_code"] == "synthetic"


@pytest.mark.shared
def test_real_amewoo_to_bfdata(amewoo_tif, tmp_path):
    ds, _ = load_or_preprocess(species_cfg(code="amewoo", raster=str(amewoo_tif), version_year=2019,
                                           res_km=150), {"root": str(tmp_path)})
    assert ds.sizes["week"] == 52
    np.testing.assert_allclose(ds["distr"].sum("cell"), 1.0, atol=1e-12)
    # no sentinel leaks: the abundance mass per km^2 survives projection (both CRSs equal-area)
    with rasterio.open(amewoo_tif) as src:
        a, t = src.read().astype(float), src.transform
    a[np.isclose(a, src.nodata, rtol=1e-6)] = 0.0
    ratio = ds["totals"].values * 150e3 ** 2 / (a.sum(axis=(1, 2)) * abs(t.a * t.e))
    assert np.all(np.abs(ratio - 1) < 0.02)
    # independent cell set: bilinear interpolation (pyproj + numpy, exact transforms) of the
    # "non-zero in some week" mask at the 75 km intermediate points (factor round(150/80) = 2)
    pos = (a > 0).any(axis=0)
    xs = np.arange(0, 12e6, 75e3) + 37.5e3
    ys = np.arange(14.1e6, 3.9e6, -75e3) - 37.5e3
    xx, yy = np.meshgrid(xs, ys)
    mx, my = Transformer.from_crs(AMERICAS_LAEA, src.crs.to_wkt(), always_xy=True).transform(xx, yy)
    col, row = (mx - t.c) / t.a - 0.5, (my - t.f) / t.e - 0.5

    def hits(dc: float, dr: float) -> np.ndarray:
        """Intermediate points with a positive bilinear weight on a non-zero source cell."""
        c, r = col + dc, row + dr
        c0, r0 = np.floor(c).astype(int), np.floor(r).astype(int)
        fx, fy = c - c0, r - r0
        hit = np.zeros(xx.shape, bool)
        for i, j, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                        (1, 1, fx * fy)):
            rr, cc = r0 + i, c0 + j
            ok = (rr >= 0) & (rr < pos.shape[0]) & (cc >= 0) & (cc < pos.shape[1]) & (w > 0)
            hit[ok] |= pos[rr[ok], cc[ok]]
        return hit

    def cells(hit: np.ndarray) -> set:
        rr, cc = np.nonzero(hit.reshape(len(ys) // 2, 2, len(xs) // 2, 2).any(axis=(1, 3)))
        return set(zip((150e3 * (cc + 0.5)).round(), (14.1e6 - 150e3 * (rr + 0.5)).round(), strict=True))

    got = set(zip(ds.cell_x.values.round(), ds.cell_y.values.round(), strict=True))
    exact = cells(hits(0, 0))
    # GDAL warps with an approximate transformer (error <= 1/8 source pixel), so a cell decided by a
    # neighbour within 1/8 pixel of the kernel edge may flip; every other cell must agree.
    shifted = [hits(dc, dr) for dc in (-0.125, 0, 0.125) for dr in (-0.125, 0, 0.125)]
    assert cells(np.logical_and.reduce(shifted)) <= got <= cells(np.logical_or.reduce(shifted))
    assert len(exact) == 371  # golden: this exact recount on amewoo_2019_100km.tif
    assert len(got) == len(exact)


def test_cli_prints_a_summary(tmp_path):
    path = laea_tif(tmp_path, blob_cube())
    out = subprocess.run(
        [sys.executable, "-m", "birdflow.preprocess", "species=synthetic", f"species.raster={path}",
         "species.code=tst", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cells per week" in out.stdout and "GB needed" in out.stdout
    assert str(tmp_path / "data" / "processed" / "tst_2022_100km_") in out.stdout


def test_without_zero_fill_nan_cells_do_not_dilute_their_neighbours(tmp_path):
    cube = np.ones((52, 4, 4))
    cube[:, :, 2:] = np.nan  # east half "insufficient data" (eBird 2023 NaN)
    path = laea_tif(tmp_path, cube, res_km=50.0, x0_cells=101, y0_cells=200)  # blocks straddle
    species = species_cfg(raster=str(path), res_km=100)
    filled = preprocess(species, {"root": str(tmp_path), "zero_fill": True})
    kept = preprocess(species, {"root": str(tmp_path), "zero_fill": False})
    # 100 km blocks hold 50 km columns (pad, 0), (1, 2), (3, pad); with 2 block rows the
    # zero-filled means are 0.5 + 0.5 per row, the NaN-aware means 1 + 1 (by hand)
    np.testing.assert_allclose(filled["totals"].values, 2.0)
    np.testing.assert_allclose(kept["totals"].values, 4.0)
    assert filled.attrs["cache_key"] != kept.attrs["cache_key"] and kept.attrs["zero_fill"] == 0
