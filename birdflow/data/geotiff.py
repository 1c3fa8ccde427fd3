"""Writing (band, y, x) cubes on a BirdFlowData grid as GeoTIFFs with CRS and band dates.

Shared by the GIS export (:mod:`birdflow.export.gis`) and the flux files
(:mod:`birdflow.evaluation.flux`). Bands are float32 with NaN as nodata, LZW-compressed; each
band's description is its date (``YYYY-MM-DD``) and its tags hold ``week`` and ``date``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from rasterio.crs import CRS as RioCRS
from rasterio.transform import Affine

from birdflow.data.cf import cell_to_grid
from birdflow.io import atomic_path


def grid_transform(ds: xr.Dataset) -> Affine:
    """North-up affine transform of the grid from its column/row centres (metres)."""
    x, y = ds["x"].values.astype(float), ds["y"].values.astype(float)
    fallback = float(ds.attrs.get("res_km", 0.0)) * 1000.0
    xres = (x[-1] - x[0]) / (len(x) - 1) if len(x) > 1 else fallback
    yres = (y[0] - y[-1]) / (len(y) - 1) if len(y) > 1 else fallback
    return Affine(xres, 0.0, x[0] - xres / 2, 0.0, -yres, y[0] + yres / 2)


def write_grid_geotiff(ds: xr.Dataset, cube: np.ndarray, path: str | os.PathLike, *,
                       dates=None, weeks=None, description: str = "",
                       units: str = "proportion of the population per cell") -> Path:
    """Write an (n_bands, nrow, ncol) cube on the grid of ``ds`` as a GeoTIFF, atomically.

    Args:
        ds: BirdFlowData giving the grid (x, y) and the CRS.
        cube: (n_bands, nrow, ncol) values; NaN is the nodata value.
        path: output file.
        dates, weeks: per band (band descriptions and tags); default the data's.
        description, units: dataset tags.
    """
    cube = np.asarray(cube, dtype=np.float32)
    dates = pd.DatetimeIndex(ds["date"].values if dates is None else dates)
    weeks = ds["week"].values if weeks is None else np.asarray(weeks)
    profile = {"driver": "GTiff", "dtype": "float32", "count": cube.shape[0],
               "width": cube.shape[2], "height": cube.shape[1],
               "crs": RioCRS.from_wkt(ds.attrs.get("crs_wkt") or ds.rio.crs.to_wkt()),
               "transform": grid_transform(ds), "nodata": np.nan, "compress": "lzw"}
    path = Path(path)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(cube)
        for band, (d, w) in enumerate(zip(dates, weeks, strict=True), start=1):
            dst.set_band_description(band, f"{d:%Y-%m-%d}")
            dst.update_tags(band, week=str(int(w)), date=f"{d:%Y-%m-%d}")
        dst.update_tags(species=str(ds.attrs.get("species_code", "")), description=description,
                        units=units, software="birdflow")
    return path


def write_weekly_geotiff(ds: xr.Dataset, per_cell: np.ndarray, path: str | os.PathLike,
                         **kwargs) -> Path:
    """:func:`write_grid_geotiff` of (n_bands, n_cells) values on the active cells."""
    return write_grid_geotiff(ds, cell_to_grid(ds, per_cell), path, **kwargs)
