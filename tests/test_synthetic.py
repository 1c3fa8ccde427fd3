"""The synthetic species: determinism, the GeoTIFF, the true chain's invariants, the tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from pyproj import CRS

from birdflow.cli.synthetic import main
from birdflow.data.bfdata import make_bfdata
from birdflow.data.grid import from_lonlat, snap_to_cells
from birdflow.data.weeks import date_to_week, week_dates
from birdflow.errors import ConfigError
from birdflow.model.fitted import load_model
from birdflow.synthetic.flyway import EDGE_M, LAEA_AMERICAS, build_flyway
from birdflow.synthetic.species import (
    NODATA,
    SyntheticSettings,
    ensure_synthetic,
    sample_tracks,
    synthetic_truth,
)

CFG = {"code": "synthetic", "version_year": 2022,
       "synthetic": {"seed": 0, "native_res_km": 100, "size": 1.0, "n_tracks": 200}}


def cfg(**synthetic):
    return {**CFG, "synthetic": {**CFG["synthetic"], **synthetic}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return ensure_synthetic(CFG, tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def truth():
    return synthetic_truth(CFG)


def read_bands(path):
    with rasterio.open(path) as f:
        return f.read().astype(np.float64), f.profile, f.descriptions, f.crs, f.transform


def test_same_seed_gives_identical_files_and_a_new_seed_does_not(tmp_path):
    small = cfg(size=0.6, n_tracks=30)
    a, b = ensure_synthetic(small, tmp_path / "a"), ensure_synthetic(small, tmp_path / "b")
    assert a.raster.read_bytes() == b.raster.read_bytes()
    assert a.tracks.read_bytes() == b.tracks.read_bytes()
    ma, mb = load_model(a.truth), load_model(b.truth)
    np.testing.assert_array_equal(ma.marginals, mb.marginals)
    np.testing.assert_array_equal(ma.data["distr"].values, mb.data["distr"].values)
    c = ensure_synthetic(cfg(size=0.6, n_tracks=30, seed=1), tmp_path / "c")
    assert c.raster.parent.name != a.raster.parent.name
    assert c.tracks.read_bytes() != a.tracks.read_bytes()
    assert not np.allclose(load_model(c.truth).data["distr"].values, ma.data["distr"].values)


def test_geotiff_reads_back_like_an_st_raster(files):
    bands, profile, descriptions, crs, transform = read_bands(files.raster)
    assert bands.shape[0] == 52 and profile["dtype"] == "float32"
    assert profile["compress"] == "lzw"
    assert CRS.from_wkt(crs.to_wkt()).equals(CRS.from_user_input(LAEA_AMERICAS))
    assert list(descriptions) == [f"{d:%Y-%m-%d}" for d in week_dates(2022)]
    assert profile["nodata"] == NODATA == float(np.float32(-3.4e38))
    nodata = bands == NODATA
    assert nodata[0].any() and (nodata == nodata[0]).all()  # the same ocean cells in every band
    assert (bands[~nodata] >= 0).all()
    assert transform.a == 100e3 and transform.e == -100e3
    left, top = transform.c, transform.f
    right, bottom = left + 100e3 * profile["width"], top - 100e3 * profile["height"]
    for edge in (left, top, right, bottom):  # aggregation by 2, 3, 6 needs no resampling
        assert edge % EDGE_M == 0
    totals = np.where(nodata, 0, bands).sum(axis=(1, 2))
    assert not np.allclose(totals, 1.0) and totals.std() > 0  # raw, like S&T: not normalised


def test_truth_chain_invariants(truth):
    ds, model = truth
    mu = model.distrs()
    dyn = ds["dynamic_mask"].values
    np.testing.assert_allclose(mu.sum(axis=1), 1.0, atol=1e-12)
    assert ((mu > 0) == dyn).all()  # mass exactly on A_t: none outside, all cells inside
    n = dyn.sum(axis=1)
    for t in range(52):
        M = model.marginals[t]
        nf, nt = n[t], n[(t + 1) % 52]
        np.testing.assert_allclose(M.sum(axis=1)[:nf], mu[t, dyn[t]], rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(M.sum(axis=0)[:nt], mu[(t + 1) % 52, dyn[(t + 1) % 52]],
                                   rtol=1e-9, atol=1e-15)
        assert (M[:nf, :nt] > 0).all() and not M[nf:].any() and not M[:, nt:].any()
    mu53 = model.marginals[51].sum(axis=0)[: n[0]]
    np.testing.assert_allclose(mu53, model.marginals[0].sum(axis=1)[: n[0]], rtol=1e-9, atol=1e-15)
    assert len({dyn[t].tobytes() for t in range(52)}) > 10  # the support moves with the season
    assert 250 <= ds.sizes["cell"] <= 450 and 60 <= n.min() and n.max() <= 150


def test_truth_data_equals_the_normalised_geotiff_bands(files, truth):
    ds, model = truth
    bands, _, _, _, transform = read_bands(files.raster)
    bands = np.where(bands == NODATA, np.nan, bands)
    rows = np.round((transform.f - ds["cell_y"].values) / -transform.e - 0.5).astype(int)
    cols = np.round((ds["cell_x"].values - transform.c) / transform.a - 0.5).astype(int)
    active = bands[:, rows, cols]
    np.testing.assert_allclose(ds["distr"].values, active / active.sum(axis=1, keepdims=True),
                               rtol=1e-12, atol=0)
    # preprocessing the GeoTIFF at its native resolution yields the same cells
    x = transform.c + transform.a * (np.arange(bands.shape[2]) + 0.5)
    y = transform.f + transform.e * (np.arange(bands.shape[1]) + 0.5)
    again = make_bfdata(bands, x, y, LAEA_AMERICAS, np.arange(1, 53), week_dates(2022),
                        species_code="synthetic", version_year=2022, res_km=100)
    for name in ("cell_x", "cell_y", "cell_lon", "cell_lat", "dynamic_mask", "distr"):
        np.testing.assert_array_equal(again[name].values, ds[name].values)
    # the model's mu_t is the float64 truth; the data went through float32 (rel. error 6e-8)
    np.testing.assert_allclose(model.distrs(), ds["distr"].values, rtol=2e-7)
    saved = load_model(files.truth)
    assert saved.hyperparameters["truth"] is True
    np.testing.assert_allclose(saved.marginals, model.marginals, rtol=1e-6, atol=1e-12)


def test_tracks_csv_schema_dates_and_positions(files, truth):
    ds, _ = truth
    tracks = pd.read_csv(files.tracks)
    assert list(tracks.columns) == ["bird_id", "date", "lat", "lon"]
    assert tracks["bird_id"].nunique() == 200
    assert tracks.groupby("bird_id").size().min() >= 10  # several fixes per bird
    date = pd.to_datetime(tracks["date"], format="%Y-%m-%d")
    week = date_to_week(date)
    jan1 = pd.to_datetime({"year": date.dt.year, "month": 1, "day": 1})
    centre = jan1 + pd.to_timedelta(3 + 7 * (week - 1), unit="D")  # as weeks.week_dates
    assert ((date - centre).abs() <= pd.Timedelta(days=3)).all()
    first = date.groupby(tracks["bird_id"]).transform("min")
    assert (date.groupby(tracks["bird_id"]).diff().dropna() > pd.Timedelta(0)).all()
    assert ((date - first) <= pd.Timedelta(days=365)).all()  # one year per bird
    x, y = from_lonlat(tracks["lon"], tracks["lat"], LAEA_AMERICAS)
    cell = snap_to_cells(x, y, ds["x"].values, ds["y"].values, ds["static_mask"].values)
    assert (cell >= 0).all()  # inside the grid, on an active cell
    assert ds["dynamic_mask"].values[week - 1, cell].all()  # the week's support: right week


def test_sampled_weekly_cell_frequencies_match_mu(truth):
    ds, model = truth
    n = 10_000
    fixes = sample_tracks(model, n, seed=7, max_gap_weeks=1)  # every bird fixed every week
    # the fixes' lon/lat snap back to the sampled cells and dates to the sampled weeks
    x, y = from_lonlat(fixes["lon"].values, fixes["lat"].values, LAEA_AMERICAS)
    snapped = snap_to_cells(x, y, ds["x"].values, ds["y"].values, ds["static_mask"].values)
    np.testing.assert_array_equal(snapped, fixes["cell"].values)
    np.testing.assert_array_equal(date_to_week(fixes["date"]), fixes["week"].values)
    mu = model.distrs()
    for w in range(1, 53):
        cells = fixes.loc[fixes["week"] == w, "cell"].values
        assert cells.size == n  # a bird starting at a random week visits every week once
        emp = np.bincount(cells, minlength=mu.shape[1]) / n
        tv = 0.5 * np.abs(emp - mu[w - 1]).sum()
        # E[TV] <= 0.5 sum_i sqrt(mu_i (1 - mu_i) / n) (Cauchy-Schwarz); McDiarmid adds
        # sqrt(log(52 / 1e-6) / (2 n)) for a 1e-6 chance over all 52 weeks.
        bound = 0.5 * np.sqrt(mu[w - 1] * (1 - mu[w - 1]) / n).sum() + np.sqrt(np.log(52e6) / (2 * n))
        assert tv < bound, (w, tv, bound)


def test_size_knob_grows_the_grid():
    small, base, large = (build_flyway(0, 100, s) for s in (0.5, 1.0, 2.0))
    cells = [int(c.static_mask.sum()) for c in (small, base, large)]
    assert cells[0] < cells[1] < cells[2]
    assert 3.0 < cells[2] / cells[1] < 5.5  # ~ size^2
    for res_km in (150, 200, 300):
        ch = build_flyway(0, res_km, 1.0)
        res = res_km * 1e3
        assert (ch.x[0] - res / 2) % EDGE_M == 0 and (ch.y[0] + res / 2) % EDGE_M == 0
        assert (ch.x.size * res) % EDGE_M == 0 and (ch.y.size * res) % EDGE_M == 0


def test_reuse_does_not_regenerate_and_an_incomplete_folder_is_rebuilt(tmp_path):
    small = cfg(size=0.5, n_tracks=20)
    f = ensure_synthetic(small, tmp_path)
    paths = [f.raster, f.tracks, f.truth / "model.nc", f.truth / "data.nc"]
    before = [p.stat().st_mtime_ns for p in paths]
    inode = f.raster.stat().st_ino
    assert ensure_synthetic(small, tmp_path) == f
    assert [p.stat().st_mtime_ns for p in paths] == before
    tracks = f.tracks.read_bytes()
    f.tracks.unlink()  # a half-generated folder: rebuilt, with the same content
    ensure_synthetic(small, tmp_path)
    assert f.tracks.read_bytes() == tracks
    (f.raster.parent / "settings.json").unlink()  # no completion marker: never reused
    ensure_synthetic(small, tmp_path)
    assert f.raster.stat().st_ino != inode  # rewritten (atomic rename of a new file)
    assert (f.raster.parent / "settings.json").exists()
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("bad, key", [({"native_res_km": 70}, "native_res_km"),
                                      ({"size": 0}, "size"), ({"n_tracks": -1}, "n_tracks"),
                                      ({"sede": 1}, "sede"), ({"seed": "x"}, "non-numeric")])
def test_bad_settings_raise_a_config_error_naming_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        SyntheticSettings.from_species_cfg(cfg(**bad))


def test_cli_prints_paths_and_sizes(tmp_path, capsys):
    files = main(["species.synthetic.size=0.5", "species.synthetic.n_tracks=5", f"data.root={tmp_path}"])
    out = capsys.readouterr().out
    assert str(files.raster) in out and str(files.tracks) in out and str(files.truth) in out
    assert "cells per week" in out and "parameters" in out
    assert files.raster.exists() and files.tracks.exists()


def test_species_yaml_matches_the_generator_defaults():
    from omegaconf import OmegaConf

    from birdflow.synthetic.species import DEFAULTS

    yaml = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/species/synthetic.yaml")
    assert SyntheticSettings.from_species_cfg(yaml) == SyntheticSettings.from_species_cfg({})
    assert dict(yaml.synthetic) == DEFAULTS
