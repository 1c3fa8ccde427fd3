"""The synthetic species: an S&T-like GeoTIFF, true tracks and the true chain, generated offline.

``ensure_synthetic(species_cfg, out_dir)`` writes, under ``out_dir/<hash of the settings>/``:

* ``synthetic_abundance_median_<res>km_<year>.tif``: 52 float32 bands (LZW) in the Americas
  LAEA CRS, abundance = mu_t x a weekly population scale, nodata -3.4e38 on ocean cells,
  band descriptions = the S&T week dates;
* ``tracks.csv`` (``bird_id,date,lat,lon``): birds sampled from the true chain for one year;
* ``banding/<hash>/tracks.csv``: with ``species.synthetic.banding`` set (``species=synthetic_banding``),
  individual birds that are *not* draws from the chain (:mod:`birdflow.synthetic.banding`); they
  replace the chain's tracks as :attr:`SyntheticFiles.tracks`, while the raster, the truth and
  so the preprocessed BirdFlowData stay those of the scene (the banding node is not hashed
  into the folder's name);
* ``truth/``: the true chain as a run dir (``birdflow.model.fitted.save_model``);
* ``settings.json``: written last; a folder without it is regenerated, never reused.

The chain itself is built by :mod:`birdflow.synthetic.flyway` for the scene
``species.synthetic.scene`` (:mod:`birdflow.synthetic.scene`; the continental one is sparse:
its truth is saved with its neighbour table). CLI:
``python -m birdflow.synthetic [species.synthetic.size=2] [data.root=data]``
(``species=synthetic_continental`` for the continental scene).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from rasterio.crs import CRS as RioCRS
from rasterio.transform import Affine

from birdflow.data import preprocess as _data
from birdflow.data.bfdata import load_bfdata, make_bfdata, n_parameters
from birdflow.data.weeks import week_dates
from birdflow.errors import ConfigError
from birdflow.io import atomic_path, write_text_atomic
from birdflow.model.fitted import DATA_FILE, MODEL_FILE, BirdFlowModel, load_model, save_model
from birdflow.model.markov import WeekIndex
from birdflow.synthetic.banding import BandingSettings
from birdflow.synthetic.flyway import (
    EDGE_M,
    LAEA_AMERICAS,
    N_WEEKS,
    build_flyway,
    true_season_weeks,
)
from birdflow.synthetic.recoveries import describe_banding, ensure_banding
from birdflow.synthetic.scene import DEFAULT_SCENE, SCENES, get_scene
from birdflow.synthetic.tracks import sample_tracks
from birdflow.synthetic.zoo import ZOO, is_zoo
from birdflow.synthetic.zoo_chain import build_zoo_chain

__all__ = ["DEFAULTS", "GENERATOR_VERSION", "NODATA", "SyntheticFiles", "SyntheticSettings",
           "describe", "ensure_synthetic", "sample_tracks", "season_tags", "synthetic_truth"]

GENERATOR_VERSION = 3  # 3: season dates in the GeoTIFF tags; bump when the generated data change, so old folders are not reused
NODATA = float(np.float32(-3.4e38))  # the S&T GeoTIFF sentinel
DEFAULTS = {"seed": 0, "native_res_km": 100, "size": 1.0, "n_tracks": 200, "scene": DEFAULT_SCENE}


@dataclass(frozen=True)
class SyntheticSettings:
    """The ``synthetic:`` node of a species config (plus its ``code`` and ``version_year``)."""

    seed: int = 0
    native_res_km: float = 100.0
    size: float = 1.0
    n_tracks: int = 200
    code: str = "synthetic"
    version_year: int = 2022
    scene: str = DEFAULT_SCENE

    @classmethod
    def from_species_cfg(cls, species_cfg: Mapping) -> SyntheticSettings:
        """Read and check the settings; ConfigError names the bad key."""
        node = {**DEFAULTS, **dict(species_cfg.get("synthetic") or {})}
        node.pop("banding", None)  # the tracks' simulator: not part of the scene
        unknown = sorted(set(node) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"species.synthetic: unknown key(s) {unknown}; allowed: "
                              f"{sorted(DEFAULTS)} and banding")
        try:
            s = cls(seed=int(node["seed"]), native_res_km=float(node["native_res_km"]),
                    size=float(node["size"]), n_tracks=int(node["n_tracks"]),
                    code=str(species_cfg.get("code") or "synthetic"),
                    version_year=int(species_cfg.get("version_year") or 2022),
                    scene=scene_name(node["scene"]))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"species.synthetic: non-numeric value ({e}); seed, n_tracks are "
                              "integers and native_res_km, size numbers") from e
        if s.native_res_km <= 0 or not float(EDGE_M / 1e3 / s.native_res_km).is_integer():
            raise ConfigError(f"species.synthetic.native_res_km={node['native_res_km']}: must divide "
                              "600 km (e.g. 50, 100, 150, 200, 300) so the grid aggregates exactly")
        if not 0.25 <= s.size <= 8:
            raise ConfigError(f"species.synthetic.size={node['size']}: must be in [0.25, 8] "
                              "(1 = ~370 cells at 100 km; cells grow ~ size^2)")
        if is_zoo(s.scene) and s.size != 1:
            raise ConfigError(f"species.synthetic.size={node['size']}: zoo scenes ({s.scene}) have "
                              "one size; set species.synthetic.size=1")
        if s.n_tracks < 0 or s.seed < 0:
            raise ConfigError(f"species.synthetic: seed={s.seed} and n_tracks={s.n_tracks} must be >= 0")
        return s

    def fields(self) -> dict:
        """The settings as recorded (hashed, settings.json); ``scene`` only when not the default,
        so the flyway scene's folders and files are those of before scenes existed."""
        out = asdict(self)
        if out["scene"] == DEFAULT_SCENE:
            del out["scene"]
        return out

    def key(self) -> str:
        """Short hash naming the output folder of these settings."""
        text = json.dumps({**self.fields(), "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticFiles:
    """Paths written by :func:`ensure_synthetic`."""

    raster: Path
    tracks: Path
    truth: Path


def scene_name(name) -> str:
    """A flyway scene's or zoo species' scene name, checked; ConfigError lists both kinds."""
    if is_zoo(name):
        return str(name)
    try:
        return get_scene(name).name
    except ConfigError:
        raise ConfigError(f"species.synthetic.scene={name!r}: unknown scene; choose one of "
                          f"{sorted(SCENES)} or a zoo species {sorted(ZOO)}") from None


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
    if is_zoo(s.scene):
        chain = build_zoo_chain(ZOO[s.scene], s.seed, s.native_res_km)
    else:
        chain = build_flyway(s.seed, s.native_res_km, s.size, get_scene(s.scene))
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
        raise AssertionError("synthetic cube lost cells in float32; raise the scene's floor")
    if chain.nbr is not None:  # sparse truth: joints paired with the neighbour table
        index = WeekIndex(slot_cell=index.slot_cell, cyclic=index.cyclic, nbr=chain.nbr)
    hyper = {"truth": True, "seed": s.seed, "native_res_km": s.native_res_km, "size": s.size,
             "generator": GENERATOR_VERSION}
    if s.scene != DEFAULT_SCENE:
        hyper["scene"] = s.scene
    return ds, BirdFlowModel(data=ds, index=index, marginals=chain.marginals, hyperparameters=hyper), (cube, chain.x, chain.y)


def synthetic_truth(species_cfg: Mapping) -> tuple[xr.Dataset, BirdFlowModel]:
    """The synthetic species' BirdFlowData (native resolution) and its true chain, in memory."""
    ds, model, _ = _truth(SyntheticSettings.from_species_cfg(species_cfg))
    return ds, model


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


def banding_settings(species_cfg: Mapping) -> BandingSettings | None:
    """The ``species.synthetic.banding`` node read and checked, or None when it is absent."""
    node = (species_cfg.get("synthetic") or {}).get("banding")
    if node is None:
        return None
    b = BandingSettings.from_node(_data.plain_mapping(node))
    name = SyntheticSettings.from_species_cfg(species_cfg).scene
    if not is_zoo(name) and (scene := get_scene(name)).reach_km is not None:
        raise ConfigError(f"species.synthetic.banding: the {scene.name} scene has a sparse truth; "
                          "banding birds are simulated on the flyway scene (species.synthetic.scene=flyway)")
    return b


def ensure_synthetic(species_cfg: Mapping, out_dir: str | Path) -> SyntheticFiles:
    """Generate the synthetic species' files under ``out_dir/<key>/``, or reuse complete ones.

    With ``species.synthetic.banding`` the returned ``tracks`` are the banding birds'
    (:func:`birdflow.synthetic.recoveries.ensure_banding`), generated on first use.
    """
    s = SyntheticSettings.from_species_cfg(species_cfg)
    banding = banding_settings(species_cfg)
    files = _ensure_scene(s, Path(out_dir))
    if banding is None:
        return files
    tracks = ensure_banding(files.raster.parent, banding, lambda: load_model(files.truth),
                            s.version_year)
    return replace(files, tracks=tracks)


def _ensure_scene(s: SyntheticSettings, out_dir: Path) -> SyntheticFiles:
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
    write_text_atomic(marker, json.dumps({**s.fields(), "generator": GENERATOR_VERSION}, indent=2) + "\n")
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
    print(f"scene {s.scene}: grid {grid} at {s.native_res_km:g} km, cells {n_cells}, cells per "
          f"week {per_week.min()}-{per_week.max()}, parameters {params:,} (dense)")
    if not is_zoo(s.scene) and (scene := get_scene(s.scene)).reach_km is not None:
        nbr = load_model(files.truth).index.nbr
        per_row = (nbr >= 0).sum(axis=2)
        per_row = per_row[per_row > 0]
        print(f"truth: sparse within {scene.reach_km:g} km, neighbours per row mean "
              f"{per_row.mean():.1f} max {per_row.max()}, parameters "
              f"{int(per_week[0]) + int(per_row.sum()):,}")
    if banding_settings(species_cfg) is not None:
        describe_banding(files.tracks, ds)
    return files
