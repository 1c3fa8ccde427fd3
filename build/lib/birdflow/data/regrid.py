"""Put S&T weekly cubes onto an equal-area grid whose cell edges are multiples of the resolution.

BirdFlowR's raster pipeline (reference §1.5): crop the source to its data, reproject with
bilinear resampling to an intermediate resolution ``res / factor`` (``factor = round(res /
source_res)``, at least 1) on a grid snapped to multiples of ``res``, optionally zero the cells
outside a clip polygon, then aggregate ``factor x factor`` blocks by their mean. A source that is
already in the target CRS on a grid aligned with ``res`` is aggregated directly (no resampling).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.features import geometry_mask
from rasterio.transform import array_bounds
from rasterio.warp import Resampling, reproject, transform_bounds

from birdflow.errors import DataError


@dataclass
class Regridded:
    """Weekly cubes on the final grid.

    Attributes:
        cubes: metric -> (week, nrow, ncol) float64 mean abundance per cell (NaN only when
            not zero-filled and a cell had no data).
        x, y: (ncol,), (nrow,) cell-centre coordinates in metres of ``crs`` (y decreasing).
        crs: the target CRS.
        res_km: cell size in km.
        percent_lost: (week,) % of each week's density outside the clip polygon, or None.
        source: the median file, for error messages.
    """

    cubes: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    crs: CRS
    res_km: float
    percent_lost: np.ndarray | None = None
    source: str = ""

    def crop(self, weeks: np.ndarray | slice = slice(None)) -> Regridded:
        """Keep ``weeks`` (indices) and crop to the bounding box of cells with data in them."""
        cubes = {k: v[weeks] for k, v in self.cubes.items()}
        r0, r1, c0, c1 = _bbox(np.nan_to_num(cubes["median"]) > 0, self.source)
        lost = None if self.percent_lost is None else self.percent_lost[weeks]
        return Regridded({k: v[:, r0:r1, c0:c1] for k, v in cubes.items()}, self.x[c0:c1],
                         self.y[r0:r1], self.crs, self.res_km, lost, self.source)


def _bbox(active: np.ndarray, source: str) -> tuple[int, int, int, int]:
    """Row/col slice bounds of the cells active in any week of a (week, y, x) boolean cube."""
    static = active.any(axis=0)
    if not static.any():
        raise DataError(f"{source}: every week is all zero/NaN (nothing to model, after clipping if "
                        "species.clip is set); check the file and the clip polygon, or pick another "
                        "species")
    rows, cols = np.flatnonzero(static.any(axis=1)), np.flatnonzero(static.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def source_res_m(transform: Affine, shape: tuple[int, int], src_crs: CRS, dst_crs: CRS) -> float:
    """Side in metres of a square with the area of the central source pixel, in ``dst_crs``."""
    row, col = shape[0] // 2, shape[1] // 2
    corners = [transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
    tr = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    x, y = tr.transform(*map(np.array, zip(*corners, strict=True)))
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return float(math.sqrt(area))


def _aligned_factor(transform: Affine, src_crs: CRS, dst_crs: CRS, res_m: float) -> int | None:
    """Integer factor when the source is already on a ``res``-aligned grid of ``dst_crs``."""
    step = transform.a
    if not src_crs.equals(dst_crs) or not np.isclose(step, -transform.e, rtol=1e-9):
        return None
    factor = res_m / step
    on_grid = [v / step for v in (transform.c, transform.f)]
    if abs(factor - round(factor)) > 1e-6 or any(abs(v - round(v)) > 1e-6 for v in on_grid):
        return None
    return int(round(factor))


def _pad_to_multiples(arrays: dict[str, np.ndarray], transform: Affine, res_m: float, fill: float):
    """Pad (week, y, x) arrays on a fine aligned grid so the extent is a multiple of ``res_m``."""
    step = transform.a
    nrow, ncol = next(iter(arrays.values())).shape[1:]
    xmin, ymax = transform.c, transform.f
    left = int(round((xmin - math.floor(xmin / res_m + 1e-9) * res_m) / step))
    top = int(round((math.ceil(ymax / res_m - 1e-9) * res_m - ymax) / step))
    k = int(round(res_m / step))
    right, bottom = (-(ncol + left)) % k, (-(nrow + top)) % k
    pad = ((0, 0), (top, bottom), (left, right))
    out = {m: np.pad(a, pad, constant_values=fill) for m, a in arrays.items()}
    return out, transform @ Affine.translation(-left, -top)


def _reproject_aligned(arrays: dict[str, np.ndarray], transform: Affine, src_crs: CRS, dst_crs: CRS,
                       res_m: float, factor: int, fill: float):
    """Bilinear reprojection to resolution ``res_m / factor`` on a grid snapped to ``res_m``."""
    fine = res_m / factor
    nrow, ncol = next(iter(arrays.values())).shape[1:]
    bounds = array_bounds(nrow, ncol, transform)  # (west, south, east, north)
    west, south, east, north = transform_bounds(RioCRS.from_wkt(src_crs.to_wkt()),
                                                RioCRS.from_wkt(dst_crs.to_wkt()),
                                                *bounds, densify_pts=51)
    xmin = math.floor((west - fine) / res_m) * res_m
    xmax = math.ceil((east + fine) / res_m) * res_m
    ymin = math.floor((south - fine) / res_m) * res_m
    ymax = math.ceil((north + fine) / res_m) * res_m
    shape = (int(round((ymax - ymin) / fine)), int(round((xmax - xmin) / fine)))
    dst_t = Affine(fine, 0.0, xmin, 0.0, -fine, ymax)
    nodata = None if fill == 0 else fill  # zero-filled zeros are data: they enter the blend
    out = {}
    for metric, a in arrays.items():
        dst = np.full((a.shape[0], *shape), fill, dtype=np.float64)
        reproject(a, dst, src_transform=transform, src_crs=RioCRS.from_wkt(src_crs.to_wkt()),
                  dst_transform=dst_t, dst_crs=RioCRS.from_wkt(dst_crs.to_wkt()),
                  src_nodata=nodata, dst_nodata=nodata, resampling=Resampling.bilinear)
        out[metric] = dst
    return out, dst_t


def read_clip(path: str | os.PathLike, crs: CRS) -> list:
    """Polygons of a GeoJSON/shapefile, reprojected to ``crs``."""
    import geopandas as gpd  # only needed when clipping

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: clip polygon file not found; set species.clip to an existing "
                        "GeoJSON/shapefile or null")
    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # pyogrio raises its own DataSourceError family
        raise DataError(f"{path}: not a readable polygon file ({e}); use GeoJSON or a shapefile") from e
    if gdf.crs is None:
        raise DataError(f"{path}: clip polygon has no CRS; save it with one (e.g. EPSG:4326)")
    west, south, east, north = gdf.total_bounds
    if gdf.crs.is_geographic and (min(west, south) < -360 or max(east, north) > 360):
        raise DataError(f"{path}: coordinates ({west:.0f}, {south:.0f}, {east:.0f}, {north:.0f}) are "
                        "not degrees although the file says lon/lat (GeoJSON is always WGS84); "
                        "reproject the polygon to EPSG:4326 before saving")
    polys = [g for g in gdf.to_crs(crs.to_wkt()).geometry if g is not None and not g.is_empty]
    if not polys:
        raise DataError(f"{path}: clip file holds no polygons; check the file")
    return polys


def regrid(cubes: Mapping[str, xr.DataArray], crs, res_km: float, *, zero_fill: bool = True,
           clip: list | None = None) -> Regridded:
    """Reproject and aggregate S&T cubes (same grid) to ``res_km`` cells in an equal-area ``crs``.

    Args:
        cubes: metric ('median' required, 'lower'/'upper' optional) -> (week, y, x) DataArray
            from :func:`birdflow.data.ebirdst.read_st_raster`.
        crs: target CRS (anything pyproj accepts); should be equal-area.
        res_km: target cell size in km.
        zero_fill: NaN -> 0 before resampling (BirdFlowR <= 0.1.0.9080); else NaN propagates and
            aggregation ignores NaN.
        clip: polygons in ``crs`` (see :func:`read_clip`); fine cells whose centre is outside -> 0.

    Returns:
        :class:`Regridded` on a grid with all cell edges at multiples of ``res_km`` km (not cropped).
    """
    median = cubes["median"]
    source = median.attrs.get("source", "S&T raster")
    src_crs, dst_crs = CRS.from_wkt(median.rio.crs.to_wkt()), CRS.from_user_input(crs)
    fill = 0.0 if zero_fill else np.nan
    arrays = {m: (np.nan_to_num(da.values, nan=0.0) if zero_fill else np.asarray(da.values, float))
              for m, da in cubes.items()}
    r0, r1, c0, c1 = _bbox(np.nan_to_num(arrays["median"]) > 0, source)
    # one-cell border of fill so that bilinear kernels reach past the outermost data cells
    # (GDAL drops points beyond the source edge instead of blending them with zeros)
    arrays = {m: np.pad(a[:, r0:r1, c0:c1], ((0, 0), (1, 1), (1, 1)), constant_values=fill)
              for m, a in arrays.items()}
    transform = median.rio.transform() @ Affine.translation(c0 - 1, r0 - 1)
    res_m = float(res_km) * 1000.0
    factor = _aligned_factor(transform, src_crs, dst_crs, res_m)
    if factor is not None:
        fine_arrays, fine_t = _pad_to_multiples(arrays, transform, res_m, fill)
    else:
        src_m = source_res_m(transform, arrays["median"].shape[1:], src_crs, dst_crs)
        factor = max(1, int(round(res_m / src_m)))
        fine_arrays, fine_t = _reproject_aligned(arrays, transform, src_crs, dst_crs, res_m,
                                                 factor, fill)
    lost = None
    if clip is not None:
        shape = fine_arrays["median"].shape[1:]
        outside = geometry_mask(clip, out_shape=shape, transform=fine_t)  # True = centre outside
        pre = np.nansum(fine_arrays["median"], axis=(1, 2))
        for a in fine_arrays.values():
            a[:, outside] = 0.0
        post = np.nansum(fine_arrays["median"], axis=(1, 2))
        lost = np.where(pre > 0, (pre - post) / np.where(pre > 0, pre, 1.0) * 100.0, 0.0)
    nweek, nrow, ncol = fine_arrays["median"].shape
    out = {}
    for m, a in fine_arrays.items():
        blocks = a.reshape(nweek, nrow // factor, factor, ncol // factor, factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks -> NaN
            out[m] = blocks.mean(axis=(2, 4)) if zero_fill else np.nanmean(blocks, axis=(2, 4))
    x = fine_t.c + res_m * (np.arange(ncol // factor) + 0.5)
    y = fine_t.f - res_m * (np.arange(nrow // factor) + 0.5)
    return Regridded(out, x, y, dst_crs, float(res_km), lost, source)
