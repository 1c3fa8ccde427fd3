"""The synthetic species: an S&T-like GeoTIFF, true tracks and the true chain, generated offline.

``ensure_synthetic(species_cfg, out_dir)`` writes, under ``out_dir/<hash of the settings>/``:

* ``synthetic_abundance_median_<res>km_<year>.tif``: 52 float32 bands (LZW) in the Americas
  LAEA CRS, abundance = mu_t x a weekly population scale, nodata -3.4e38 on ocean cells,
  band descriptions = the S&T week dates;
* ``tracks.csv`` (``bird_id,date,lat,lon``): birds sampled from the true chain for one year;
* ``truth/``: the true chain as a run dir (``birdflow.model.fitted.save_model``);
* ``settings.json``: written last; a folder without it is regenerated, never reused.

The chain itself is built by :mod:`birdflow.synthetic.flyway`. CLI:
``python -m birdflow.synthetic [species.synthetic.size=2] [data.root=data]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from rasterio.crs import CRS as RioCRS
from rasterio.transform import Affine

from birdflow.data.bfdata import load_bfdata, make_bfdata, n_parameters
from birdflow.data.grid import to_lonlat
from birdflow.data.weeks import week_dates
from birdflow.errors import ConfigError
from birdflow.io import atomic_path, write_text_atomic
from birdflow.model.fitted import DATA_FILE, MODEL_FILE, BirdFlowModel, save_model
from birdflow.model.markov import WeekIndex
from birdflow.synthetic.flyway import (
    EDGE_M,
    LAEA_AMERICAS,
    N_WEEKS,
    build_flyway,
    true_season_weeks,
)

GENERATOR_VERSION = 3  # 3: season dates in the GeoTIFF tags; bump when the generated data change, so old folders are not reused
NODATA = float(np.float32(-3.4e38))  # the S&T GeoTIFF sentinel
DEFAULTS = {"seed": 0, "native_res_km": 100, "size": 1.0, "n_tracks": 200}


@dataclass(frozen=True)
class SyntheticSettings:
    """The ``synthetic:`` node of a species config (plus its ``code`` and ``version_year``)."""

    seed: int = 0
    native_res_km: float = 100.0
    size: float = 1.0
    n_tracks: int = 200
    code: str = "synthetic"
    version_year: int = 2022

    @classmethod
    def from_species_cfg(cls, species_cfg: Mapping) -> SyntheticSettings:
        """Read and check the settings; ConfigError names the bad key."""
        node = {**DEFAULTS, **dict(species_cfg.get("synthetic") or {})}
        unknown = sorted(set(node) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"species.synthetic: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
        try:
            s = cls(seed=int(node["seed"]), native_res_km=float(node["native_res_km"]),
                    size=float(node["size"]), n_tracks=int(node["n_tracks"]),
                    code=str(species_cfg.get("code") or "synthetic"),
                    version_year=int(species_cfg.get("version_year") or 2022))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"species.synthetic: non-numeric value ({e}); seed, n_tracks are "
                              "integers and native_res_km, size numbers") from e
        if s.native_res_km <= 0 or not float(EDGE_M / 1e3 / s.native_res_km).is_integer():
            raise ConfigError(f"species.synthetic.native_res_km={node['native_res_km']}: must divide "
                              "600 km (e.g. 50, 100, 150, 200, 300) so the grid aggregates exactly")
        if not 0.25 <= s.size <= 8:
            raise ConfigError(f"species.synthetic.size={node['size']}: must be in [0.25, 8] "
                              "(1 = ~370 cells at 100 km; cells grow ~ size^2)")
        if s.n_tracks < 0 or s.seed < 0:
            raise ConfigError(f"species.synthetic: seed={s.seed} and n_tracks={s.n_tracks} must be >= 0")
        return s

    def key(self) -> str:
        """Short hash naming the output folder of these settings."""
        text = json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticFiles:
    """Paths written by :func:`ensure_synthetic`."""

    raster: Path
    tracks: Path
    truth: Path


def season_tags(version_year: int) -> dict[str, str]:
    """BirdFlowR species fields of the known seasons: week-centre dates, quality 3."""
    dates = week_dates(version_year)
    out = {}
    for name, (w0, w1) in true_season_weeks().items():
        out[f"{name}_start"], out[f"{name}_end"] = f"{dates[w0 - 1]:%Y-%m-%d}", f"{dates[w1 - 1]:%Y-%m-%d}"
        out[f"{name}_quality"] = "3"
    return out


def _truth(s: SyntheticSettings) -> tuple[xr.Dataset, BirdFlowModel, tuple]:
    """Truth data (cropped to cells with data) and chain, plus the full (cube, x, y) grid."""
    chain = build_flyway(s.seed, s.native_res_km, s.size)
    cube = chain.abundance()
    # crop to the cells with data, as preprocessing does, so truth and model share one grid
    static = (np.nan_to_num(cube) > 0).any(axis=0)
    rows, cols = np.flatnonzero(static.any(axis=1)), np.flatnonzero(static.any(axis=0))
    rs, cs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    ds = make_bfdata(cube[:, rs, cs], chain.x[cs], chain.y[rs], LAEA_AMERICAS, np.arange(1, N_WEEKS + 1),
                     week_dates(s.version_year), species_code=s.code, version_year=s.version_year,
                     res_km=s.native_res_km, source=f"synthetic:{s.key()}",
                     attrs={"cache_key": s.key(), **season_tags(s.version_year)})
    index = WeekIndex.from_bfdata(ds)
    if not np.array_equal(index.slot_cell, WeekIndex.from_dynamic_mask(chain.dynamic_mask, True).slot_cell):
        raise AssertionError("synthetic cube lost cells in float32; raise flyway.FLOOR")
    hyper = {"truth": True, "seed": s.seed, "native_res_km": s.native_res_km, "size": s.size,
             "generator": GENERATOR_VERSION}
    return ds, BirdFlowModel(data=ds, index=index, marginals=chain.marginals, hyperparameters=hyper), (cube, chain.x, chain.y)


def synthetic_truth(species_cfg: Mapping) -> tuple[xr.Dataset, BirdFlowModel]:
    """The synthetic species' BirdFlowData (native resolution) and its true chain, in memory."""
    ds, model, _ = _truth(SyntheticSettings.from_species_cfg(species_cfg))
    return ds, model


def sample_tracks(model: BirdFlowModel, n_tracks: int, seed: int, *, max_gap_weeks: int = 3,
                  version_year: int = 2022) -> pd.DataFrame:
    """Sample birds from a cyclic chain for one year each, starting at a random week.

    Each bird starts in a uniform random week w0 (of ``version_year``) at a cell drawn from the
    model's distribution of w0, then moves by the weekly transitions for 51 steps. It is fixed
    at its first week and then every 1..``max_gap_weeks`` weeks; a fix's date is the week
    centre +- up to 3 days and its position uniform inside the cell.

    Returns:
        DataFrame with ``bird_id, date, lat, lon`` (degrees WGS84) and the true ``week``
        (1..52) and ``cell`` (active-cell index), one row per fix, by bird then date.
    """
    if not model.cyclic or model.index.n_weeks != N_WEEKS:
        raise ValueError("sample_tracks needs a cyclic 52-week model (a year of transitions)")
    rng = np.random.default_rng([seed, 1])
    ds, idx = model.data, model.index
    start = rng.integers(0, N_WEEKS, n_tracks)
    cell = np.zeros((n_tracks, N_WEEKS), dtype=np.int64)
    for w in range(N_WEEKS):
        birds = np.flatnonzero(start == w)
        p = model.distr_at(w)
        cell[birds, 0] = rng.choice(p.size, size=birds.size, p=p / p.sum())
    for u in range(2 * N_WEEKS - 2):  # absolute week index; bird b moves at u = start_b + k
        t = u % N_WEEKS
        k = u - start
        movers = np.flatnonzero((k >= 0) & (k < N_WEEKS - 1))
        if movers.size == 0:
            continue
        src, dst = idx.slot_cell[t], idx.slot_cell[(t + 1) % N_WEEKS]
        dmi = np.full(model.n_cells, -1)
        dmi[src[src >= 0]] = np.arange(int((src >= 0).sum()))
        rows = dmi[cell[movers, k[movers]]]
        cum = np.cumsum(model.marginal_at(t), axis=1)
        cum = np.divide(cum, cum[:, -1:], out=np.ones_like(cum), where=cum[:, -1:] > 0)
        # searchsorted over all rows at once: row r occupies (r, r + 1] after adding r
        flat = (cum + np.arange(cum.shape[0])[:, None]).ravel()
        pick = np.searchsorted(flat, rng.random(movers.size) + rows, side="right")
        pick = np.clip(pick - rows * cum.shape[1], 0, cum.shape[1] - 1)
        cell[movers, k[movers] + 1] = dst[pick]
    gaps = rng.integers(1, max_gap_weeks + 1, (n_tracks, N_WEEKS))
    steps = np.cumsum(np.column_stack([np.zeros(n_tracks, int), gaps[:, :-1]]), axis=1)
    bird, col = np.nonzero(steps < N_WEEKS)
    k = steps[bird, col]
    absolute = start[bird] + k
    week = absolute % N_WEEKS + 1
    year = version_year + absolute // N_WEEKS
    jan1 = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    date = jan1 + (3 + 7 * (week - 1) + rng.integers(-3, 4, bird.size)).astype("timedelta64[D]")
    c = cell[bird, k]
    res_m = float(ds.attrs["res_km"]) * 1e3
    x = ds["cell_x"].values[c] + (rng.random(c.size) - 0.5) * 0.999 * res_m
    y = ds["cell_y"].values[c] + (rng.random(c.size) - 0.5) * 0.999 * res_m
    lon, lat = to_lonlat(x, y, ds.attrs["crs_wkt"])
    width = len(str(n_tracks))
    return pd.DataFrame({"bird_id": [f"syn{b + 1:0{width}d}" for b in bird],
                         "date": pd.DatetimeIndex(date), "lat": lat, "lon": lon,
                         "week": week, "cell": c})


def _write_tif(full: tuple, ds: xr.Dataset, path: Path) -> None:
    cube, x, y = full  # the whole generated grid: its edges are multiples of EDGE_M
    res_m = float(ds.attrs["res_km"]) * 1e3
    profile = {"driver": "GTiff", "dtype": "float32", "count": N_WEEKS, "width": x.size,
               "height": y.size, "crs": RioCRS.from_wkt(ds.attrs["crs_wkt"]),
               "transform": Affine(res_m, 0.0, x[0] - res_m / 2, 0.0, -res_m, y[0] + res_m / 2),
               "nodata": NODATA, "compress": "lzw"}
    dates = pd.DatetimeIndex(ds["date"].values)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.where(np.isnan(cube), np.float32(NODATA), cube).astype(np.float32))
        for band, d in enumerate(dates, start=1):
            dst.set_band_description(band, f"{d:%Y-%m-%d}")
        dst.update_tags(species=str(ds.attrs["species_code"]), source="birdflow synthetic generator",
                        **season_tags(int(ds.attrs["version_year"])))


def ensure_synthetic(species_cfg: Mapping, out_dir: str | Path) -> SyntheticFiles:
    """Generate the synthetic species' files under ``out_dir/<key>/``, or reuse complete ones."""
    s = SyntheticSettings.from_species_cfg(species_cfg)
    folder = Path(out_dir) / s.key()
    files = SyntheticFiles(
        raster=folder / f"synthetic_abundance_median_{s.native_res_km:g}km_{s.version_year}.tif",
        tracks=folder / "tracks.csv", truth=folder / "truth")
    marker = folder / "settings.json"
    needed = [marker, files.raster, files.tracks, files.truth / MODEL_FILE, files.truth / DATA_FILE]
    if all(p.exists() for p in needed):
        return files
    marker.unlink(missing_ok=True)  # from here on the folder is incomplete until rewritten
    ds, model, full = _truth(s)
    _write_tif(full, ds, files.raster)
    tracks = sample_tracks(model, s.n_tracks, s.seed, version_year=s.version_year)
    with atomic_path(files.tracks) as tmp:
        out = tracks[["bird_id", "date", "lat", "lon"]].assign(date=tracks["date"].dt.strftime("%Y-%m-%d"))
        out.to_csv(tmp, index=False, float_format="%.6f")
    save_model(model, files.truth)
    write_text_atomic(marker, json.dumps({**asdict(s), "generator": GENERATOR_VERSION}, indent=2) + "\n")
    return files


def describe(species_cfg: Mapping, data_cfg: Mapping | None = None) -> SyntheticFiles:
    """Generate (or find) the synthetic species' files; print their paths and sizes."""
    if str(species_cfg.get("code")) != "synthetic":
        raise ConfigError(f"species={species_cfg.get('code')}: not the synthetic species; "
                          "use species=synthetic")
    root = Path((data_cfg or {}).get("root") or "data")
    files = ensure_synthetic(species_cfg, root / "synthetic")
    s = SyntheticSettings.from_species_cfg(species_cfg)
    ds = load_bfdata(files.truth / DATA_FILE)
    per_week = ds["dynamic_mask"].values.sum(axis=1)
    params = n_parameters(ds["dynamic_mask"].values, cyclic=True)
    grid, n_cells = f"{ds.sizes['y']} x {ds.sizes['x']}", ds.sizes["cell"]
    print(f"raster: {files.raster}\ntracks: {files.tracks}\ntruth:  {files.truth}")
    print(f"grid {grid} at {s.native_res_km:g} km, cells {n_cells}, cells per week "
          f"{per_week.min()}-{per_week.max()}, parameters {params:,}")
    return files
