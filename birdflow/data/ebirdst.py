"""eBird Status & Trends weekly abundance rasters: file layout and GeoTIFF -> xarray.

The ebirdst tools store one 52-band GeoTIFF per metric::

    <root>/<version_year>/<code>/weekly/<code>_abundance_<metric>_<res>_<version_year>.tif

with ``metric`` in median | lower | upper and ``res`` in 3km | 9km | 27km. Band k holds
week k (band descriptions or tags may carry the week's date, e.g. ``2022-01-04``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from rasterio.errors import RasterioIOError

from birdflow.data.weeks import N_WEEKS, date_to_week, week_dates
from birdflow.errors import ConfigError, DataError

SOURCE_RESOLUTIONS = ("3km", "9km", "27km")
METRICS = ("median", "lower", "upper")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_YEAR_RE = re.compile(r"_((?:19|20)\d{2})(?=[_.])")


def normalize_source_res(res: str | int | float) -> str:
    """'27km', '27' or 27 -> '27km'; ConfigError for anything S&T does not publish."""
    text = str(res).strip().lower()
    text = text if text.endswith("km") else f"{text.removesuffix('.0')}km"
    if text not in SOURCE_RESOLUTIONS:
        raise ConfigError(f"species.source_res={res!r} is not an S&T resolution; "
                          f"use one of {', '.join(SOURCE_RESOLUTIONS)}")
    return text


def st_raster_path(root: str | os.PathLike, code: str, version_year: int, res: str | int,
                   metric: str = "median") -> Path:
    """Where the ebirdst layout keeps the weekly abundance GeoTIFF of one metric."""
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not an S&T abundance metric; use one of {METRICS}")
    res = normalize_source_res(res)
    name = f"{code}_abundance_{metric}_{res}_{int(version_year)}.tif"
    return Path(root) / str(int(version_year)) / code / "weekly" / name


def bound_paths(median: str | os.PathLike) -> dict[str, Path]:
    """The ``lower``/``upper`` files beside a median raster, for those that exist."""
    median = Path(median)
    if "_median_" not in median.name:
        return {}
    found = {}
    for metric in ("lower", "upper"):
        p = median.with_name(median.name.replace("_median_", f"_{metric}_"))
        if p.exists():
            found[metric] = p
    return found


def _band_dates(src) -> list[pd.Timestamp] | None:
    """Dates found in every band's description or tags, else None."""
    dates = []
    for band in range(1, src.count + 1):
        texts = [src.descriptions[band - 1] or ""] + [str(v) for v in src.tags(band).values()]
        match = next((m for m in (_DATE_RE.search(t) for t in texts) if m), None)
        if match is None:
            return None
        dates.append(pd.Timestamp(match.group(0)))
    return dates


def _is_nodata(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where ``values`` is NaN or the file's sentinel (float32-rounded, so a tolerance)."""
    out = np.isnan(values)
    if nodata is not None and np.isfinite(nodata):
        out |= np.isclose(values, nodata, rtol=1e-6, atol=0.0)
    return out


def read_st_raster(path: str | os.PathLike, version_year: int | None = None) -> xr.DataArray:
    """Read a 52-band S&T abundance GeoTIFF into a (week, y, x) float64 DataArray.

    Args:
        path: GeoTIFF with 52 bands, one per S&T week, in any projected or geographic CRS.
        version_year: S&T version year used for week dates when the bands carry none;
            None = taken from a ``_<year>`` in the file name.

    Returns:
        DataArray (week: 52, y, x), float64 relative abundance (>= 0), NaN = no data, with
        coords ``week`` (1..52), ``date`` (week centre), ``x``/``y`` (pixel centres in CRS
        units, y decreasing) and the CRS/transform written via rioxarray.

    Raises:
        DataError: missing or unreadable file, not a GeoTIFF, band count != 52, no CRS,
            negative values other than the nodata sentinel, or no week dates available.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: S&T raster not found; download it with "
                        "`python -m birdflow.download species=<name>` (EBIRDST_KEY set) "
                        "or set species.raster to an existing GeoTIFF")
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise DataError(f"{path}: not a readable GeoTIFF ({str(e).splitlines()[0]}); "
                        "re-download the file or point species.raster to a 52-band GeoTIFF") from e
    with src:
        if src.driver != "GTiff":
            raise DataError(f"{path}: is a {src.driver} file, not a GeoTIFF; point species.raster "
                            "to the S&T weekly abundance GeoTIFF")
        if src.count != N_WEEKS:
            raise DataError(f"{path}: has {src.count} bands, expected {N_WEEKS} (one per S&T week); "
                            "use the weekly abundance product (<code>_abundance_median_<res>_<year>.tif)")
        if src.crs is None:
            raise DataError(f"{path}: has no CRS; assign one (e.g. `gdal_edit.py -a_srs <crs> "
                            f"{path.name}`) or use the original S&T file")
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise DataError(f"{path}: rotated grids are not supported; warp it to a north-up grid "
                            "(gdalwarp) first")
        try:
            values = src.read().astype(np.float64)
        except RasterioIOError as e:
            raise DataError(f"{path}: unreadable pixel data ({e}); re-download the file") from e
        nodata, crs, dates = src.nodata, src.crs, _band_dates(src)
        seasons = {k: v for k, v in src.tags().items()
                   if k.endswith(("_start", "_end", "_quality")) and "breeding" in k}
        height, width = src.height, src.width
    if t.e > 0:  # south-up grid: flip to the usual north-up orientation
        values = values[:, ::-1, :]
        t = t @ Affine.translation(0, height) @ Affine.scale(1, -1)
    values[_is_nodata(values, nodata)] = np.nan
    if np.nanmin(values, initial=0.0) < 0:
        bad = int(np.argwhere(values < 0)[0][0]) + 1
        raise DataError(f"{path}: negative abundance ({np.nanmin(values):.3g}, first in band {bad}) "
                        f"that is not the nodata value ({nodata}); S&T abundance is >= 0 — set the "
                        "file's nodata value or use the original S&T file")
    if dates is not None:
        weeks = date_to_week(dates)
        if sorted(weeks.tolist()) != list(range(1, N_WEEKS + 1)):
            raise DataError(f"{path}: band dates {[d.date().isoformat() for d in dates[:3]]}... do "
                            "not map to 52 distinct S&T weeks; fix the band descriptions or remove them")
        order = np.argsort(weeks)
        values, weeks = values[order], weeks[order]
        dates = pd.DatetimeIndex(dates)[order]
    else:
        if version_year is None:
            m = _YEAR_RE.search(path.name)
            if m is None:
                raise DataError(f"{path}: bands carry no dates and the file name has no year; "
                                "pass version_year (species.version_year)")
            version_year = int(m.group(1))
        weeks = np.arange(1, N_WEEKS + 1)
        dates = week_dates(int(version_year))
    xs = t.c + t.a * (np.arange(width) + 0.5)
    ys = t.f + t.e * (np.arange(height) + 0.5)
    da = xr.DataArray(
        values, dims=("week", "y", "x"), name="abundance",
        coords={"week": weeks, "date": ("week", dates.values.astype("datetime64[ns]")),
                "x": xs, "y": ys},
        attrs={"source": str(path), **seasons},  # season dates when the file has them
    )
    da = da.rio.write_crs(crs.to_wkt()).rio.write_transform(t).rio.write_nodata(np.nan)
    return da


def write_st_raster(path: str | os.PathLike, cube: np.ndarray, transform: Affine, crs,
                    *, nodata: float | None = None, dates=None) -> Path:
    """Write a (week, y, x) cube as an S&T-like float32 GeoTIFF (atomically).

    Args:
        path: output .tif.
        cube: (bands, nrow, ncol) abundance; NaN is written as ``nodata`` when that is given.
        transform: affine of the north-west corner (metres or degrees of ``crs``).
        crs: anything rasterio accepts, or None for a file without CRS.
        nodata: sentinel to store (e.g. -3.4e38); None = NaN stays NaN.
        dates: optional band dates written as band descriptions (``YYYY-MM-DD``).
    """
    from birdflow.io import atomic_path

    cube = np.asarray(cube, dtype=np.float32)
    if nodata is not None:
        cube = np.where(np.isnan(cube), np.float32(nodata), cube)
    profile = {"driver": "GTiff", "dtype": "float32", "count": cube.shape[0], "height": cube.shape[1],
               "width": cube.shape[2], "transform": transform, "compress": "lzw",
               "nodata": nodata if nodata is not None else np.nan}
    if crs is not None:
        profile["crs"] = crs
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(cube)
        for band, date in enumerate(dates if dates is not None else [], start=1):
            dst.set_band_description(band, pd.Timestamp(date).date().isoformat())
    return Path(path)
