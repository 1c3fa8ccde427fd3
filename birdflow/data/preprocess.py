"""S&T abundance raster -> BirdFlowData (reference §1.5), cached as NetCDF.

Steps: find (or generate / download) the weekly GeoTIFFs, NaN -> 0, reproject to an equal-area
CRS on a grid aligned to the resolution (chosen from the parameter budget when ``res_km`` is
null) and aggregate by mean, optionally clip, keep the season's weeks, crop, build the masks and
normalise (:func:`birdflow.data.bfdata.make_bfdata`), optionally trim outliers per week.

CLI::

    python -m birdflow.data.preprocess species=amewoo species.raster=path/to.tif species.res_km=100
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from pyproj import CRS

from birdflow.data.bfdata import (
    load_bfdata,
    make_bfdata,
    n_parameters,
    save_bfdata,
    validate_bfdata,
)
from birdflow.data.download import DEFAULT_BASE_URL, KEY_ENV, KEY_HELP, download_st_rasters
from birdflow.data.ebirdst import bound_paths, normalize_source_res, read_st_raster, st_raster_path
from birdflow.data.regrid import read_clip, regrid, source_res_m
from birdflow.data.resolution import choose_resolution, max_params_for
from birdflow.data.weeks import N_WEEKS
from birdflow.errors import BirdFlowError, ConfigError, DataError

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1  # bump when the output for the same inputs changes
AMERICAS_LAEA = ("+proj=laea +lat_0=30 +lon_0=-95 +x_0=5500000 +y_0=9500000 +datum=WGS84 "
                 "+units=m +no_defs")
DEFAULT_DATA = {"root": "data", "ebirdst_base_url": DEFAULT_BASE_URL, "download": True,
                "zero_fill": True}
_NOT_PREPROCESSING = ("tracks", "synthetic")  # species keys that do not change the output


@dataclass
class RasterFiles:
    """The GeoTIFFs of one species: median plus the lower/upper bounds that exist."""

    median: Path
    bounds: dict[str, Path] = field(default_factory=dict)

    def all(self) -> dict[str, Path]:
        return {"median": self.median, **self.bounds}


def _plain(cfg: Mapping | None) -> dict:
    """DictConfig or mapping -> plain dict (resolved)."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def resolve_rasters(species: Mapping, data: Mapping) -> RasterFiles:
    """Find the species' GeoTIFFs: explicit path, synthetic generator, or the ebirdst layout."""
    root = Path(data.get("root") or "data")
    if species.get("raster"):
        median = Path(species["raster"])
        if not median.exists():
            raise DataError(f"{median}: species.raster does not exist; fix the path (relative to "
                            f"{Path.cwd()}) or set species.raster=null")
        return RasterFiles(median, bound_paths(median))
    code = str(species["code"])
    if code == "synthetic":
        from birdflow.data.synthetic import ensure_synthetic  # written by the synthetic module

        return RasterFiles(Path(ensure_synthetic(species, out_dir=root / "synthetic").raster))
    year, res = int(species["version_year"]), normalize_source_res(species.get("source_res") or "27km")
    median = st_raster_path(root / "raw", code, year, res)
    if not median.exists():
        if data.get("download", True) and os.environ.get(KEY_ENV):
            download_st_rasters(code, year, res, root / "raw",
                                base_url=data.get("ebirdst_base_url") or DEFAULT_BASE_URL)
        else:
            why = "downloads are off (data.download=false)" if os.environ.get(KEY_ENV) \
                else f"{KEY_ENV} is not set"
            raise DataError(f"{median}: S&T raster for {code} {year} ({res}) not found and {why}; "
                            f"place the file there by hand, or {KEY_HELP} and re-run, "
                            "or set species.raster to a 52-band GeoTIFF")
    return RasterFiles(median, bound_paths(median))


def season_weeks(start: int, end: int) -> np.ndarray:
    """S&T weeks start..end inclusive (wrapping past 52), e.g. 45..10 -> 45..52, 1..10."""
    start, end = int(start), int(end)
    if not (1 <= start <= N_WEEKS and 1 <= end <= N_WEEKS):
        raise ConfigError(f"species.start_week={start}/end_week={end}: weeks must be in 1..52")
    weeks = np.arange(start, end + 1) if start <= end else np.r_[start:N_WEEKS + 1, 1:end + 1]
    if len(weeks) == N_WEEKS and start != 1:
        raise ConfigError(f"species.start_week={start}/end_week={end} is a rotated full year; "
                          "use start_week=1 end_week=52 for the full cyclic year")
    if len(weeks) < 2:
        raise ConfigError(f"species.start_week={start}/end_week={end} selects one week; a model "
                          "needs at least two")
    return weeks


def cache_key(species: Mapping, data: Mapping, files: RasterFiles) -> str:
    """SHA-256 over the raster files (path, size, mtime), every option and PREPROCESS_VERSION."""
    stats = {m: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
             for m, p in files.all().items()}
    opts = {k: v for k, v in species.items() if k not in _NOT_PREPROCESSING and k != "raster"}
    for name in ("res_km", "trim_quantile", "max_params", "gpu_ram_gb"):  # 100 and 100.0 alike
        if opts.get(name) is not None:
            opts[name] = float(opts[name])
    if species.get("clip"):
        clip = Path(species["clip"])
        opts["clip"] = [str(clip.resolve()), *(
            [clip.stat().st_size, clip.stat().st_mtime_ns] if clip.exists() else [])]
    blob = json.dumps({"version": PREPROCESS_VERSION, "files": stats, "species": opts,
                       "zero_fill": bool(data.get("zero_fill", True))}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _trim(ds: xr.Dataset, q: float) -> xr.Dataset:
    """Cap each week's distr at the q-quantile of its non-zero values and renormalise."""
    distr = ds["distr"].values.copy()
    for t in range(distr.shape[0]):
        nz = distr[t] > 0
        cap = np.quantile(distr[t, nz], q)  # numpy 'linear' = R type 7, as BirdFlowR
        distr[t] = np.minimum(distr[t], cap)
        distr[t] /= distr[t].sum()
    ds["distr"] = (("week", "cell"), distr)
    return ds


def preprocess(species: Mapping, data: Mapping | None = None) -> xr.Dataset:
    """Build BirdFlowData for a species config (conf/species/*.yaml) and data options.

    Args:
        species: code, version_year, source_res, raster, res_km (null = from the parameter
            budget), max_params, gpu_ram_gb, crs, clip, trim_quantile, start_week, end_week, ...
        data: root, ebirdst_base_url, download, zero_fill (see conf/preprocess.yaml).

    Returns:
        BirdFlowData (see :mod:`birdflow.data.bfdata`), not yet written anywhere.
    """
    species, data = _plain(species), {**DEFAULT_DATA, **_plain(data)}
    weeks = season_weeks(species.get("start_week", 1), species.get("end_week", N_WEEKS))
    trim_q, res_km = species.get("trim_quantile"), species.get("res_km")
    if trim_q is not None and not 0 < float(trim_q) <= 1:
        raise ConfigError(f"species.trim_quantile={trim_q}: must be in (0, 1] or null")
    if res_km is not None and not float(res_km) > 0:
        raise ConfigError(f"species.res_km={res_km}: must be a positive number of km, or null to "
                          "choose it from the parameter budget")
    crs = _crs(species.get("crs") or AMERICAS_LAEA)
    files = resolve_rasters(species, data)
    year = species.get("version_year")
    cubes = {m: read_st_raster(p, year) for m, p in files.all().items()}
    shapes = {m: c.shape for m, c in cubes.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{files.median}: median and bound rasters differ in shape {shapes}; "
                        "re-download the species")
    clip = read_clip(species["clip"], crs) if species.get("clip") else None
    zero_fill = bool(data.get("zero_fill", True))
    if res_km is None:
        median_only = {"median": cubes["median"]}

        def count(res: float) -> int:
            grid = regrid(median_only, crs, res, zero_fill=zero_fill, clip=clip)
            return n_parameters(np.nan_to_num(grid.cubes["median"]).reshape(N_WEEKS, -1) > 0)

        da = cubes["median"]
        lo_km = source_res_m(da.rio.transform(), da.shape[1:], CRS.from_wkt(da.rio.crs.to_wkt()),
                             crs) / 1000.0
        res_km, _ = choose_resolution(count, max_params_for(species), lo_km=lo_km)
    log.info("preprocessing %s at %g km from %s", species.get("code"), float(res_km), files.median)
    grid = regrid(cubes, crs, float(res_km), zero_fill=zero_fill, clip=clip).crop(weeks - 1)
    key = cache_key(species, data, files)
    attrs = {"common_name": str(species.get("common_name") or ""),
             "scientific_name": str(species.get("scientific_name") or ""),
             "preprocess_hash": key[:8], "cache_key": key, "zero_fill": int(zero_fill)}
    if clip is not None:
        attrs["clip"] = Path(species["clip"]).name
    if trim_q is not None:
        attrs["trim_quantile"] = float(trim_q)
    median = cubes["median"].sel(week=weeks)
    ds = make_bfdata(grid.cubes["median"], grid.x, grid.y, grid.crs, weeks, median["date"].values,
                     species_code=str(species.get("code") or "unknown"), version_year=int(year or
                     median["date"].dt.year.values[0]), res_km=float(res_km), source=str(files.median),
                     uci=grid.cubes.get("upper"), lci=grid.cubes.get("lower"),
                     percent_lost=grid.percent_lost, attrs=attrs)
    if trim_q is not None:
        ds = _trim(ds, float(trim_q))
        validate_bfdata(ds, str(files.median))
    if grid.percent_lost is not None:
        log.info("clip %s: %% density lost per week min %.2f max %.2f", attrs["clip"],
                 grid.percent_lost.min(), grid.percent_lost.max())
    return ds


def _crs(crs) -> CRS:
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(crs)
    except CRSError as e:
        raise ConfigError(f"species.crs={crs!r} is not a CRS pyproj understands ({e}); use a PROJ "
                          "string, EPSG code or WKT, or null for the Americas LAEA") from e


def load_or_preprocess(species: Mapping, data: Mapping | None = None) -> tuple[xr.Dataset, Path]:
    """BirdFlowData from ``<root>/processed/<code>_<year>_<res>km_<hash8>.nc``, made if missing."""
    species, data = _plain(species), {**DEFAULT_DATA, **_plain(data)}
    files = resolve_rasters(species, data)
    key = cache_key(species, data, files)[:8]
    processed = Path(data.get("root") or "data") / "processed"
    stem = f"{species.get('code')}_{species.get('version_year')}"
    res = species.get("res_km")
    pattern = f"{stem}_{'*' if res is None else format(float(res), 'g')}km_{key}.nc"
    cached = sorted(processed.glob(pattern))
    if cached:
        log.info("using cached %s", cached[0])
        return load_bfdata(cached[0]), cached[0]
    ds = preprocess(species, data)
    path = processed / f"{stem}_{ds.attrs['res_km']:g}km_{key}.nc"
    save_bfdata(ds, path)
    log.info("wrote %s", path)
    return ds, path


def summary(ds: xr.Dataset, path: Path | None = None) -> str:
    """Cells, weeks, cells per week, parameters, GPU GB needed, % lost, output path."""
    from birdflow.data.resolution import MAX_PARAMS_PER_GB

    per_week = ds["dynamic_mask"].values.sum(axis=1)
    n = n_parameters(ds["dynamic_mask"].values, bool(ds.attrs.get("cyclic", 1)))
    lines = [f"species          {ds.attrs['species_code']} ({ds.attrs.get('common_name', '')})",
             f"resolution       {ds.attrs['res_km']:g} km",
             f"cells            {ds.sizes['cell']}",
             f"weeks            {ds.sizes['week']} ({int(ds.week[0])}..{int(ds.week[-1])}, "
             f"cyclic={ds.attrs.get('cyclic')})",
             f"cells per week   min {per_week.min()} max {per_week.max()}",
             f"parameters       {n:,}",
             f"GB needed        {n / MAX_PARAMS_PER_GB:.3f}"]
    if "percent_lost" in ds:
        lost = ds["percent_lost"].values
        lines.append(f"% lost (clip)    min {lost.min():.2f} mean {lost.mean():.2f} max {lost.max():.2f}")
    if path is not None:
        lines.append(f"output           {path}")
    return "\n".join(lines)


def _main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="../../conf", config_name="preprocess")
    def main(cfg: DictConfig) -> None:
        try:
            ds, path = load_or_preprocess(cfg.species, cfg.data)
        except BirdFlowError as e:
            sys.exit(f"error: {e}")
        print(summary(ds, path))

    main()


if __name__ == "__main__":
    _main()
