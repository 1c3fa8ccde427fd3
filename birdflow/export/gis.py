"""GIS-ready rasters: weekly distributions as (week, y, x) GeoTIFFs with CRS and band dates.

``export_geotiffs(model, out_dir)`` writes

* ``<species>_model_distr.tif``: the fitted chain's distribution of each week;
* ``<species>_st_distr.tif``: the S&T distribution the model was fitted to;

one float32 band per model week (NaN = inactive cell, the nodata value), the model CRS and
north-up transform, band descriptions = the week-centre dates (``YYYY-MM-DD``, increasing,
as BirdFlowR's ``export_rasters`` labels them) and band tags ``week``/``date``. Each band sums
to 1 over its cells (a proportion of the population per cell). GDAL, QGIS and R's terra read
them directly; the NetCDF files of a run (:mod:`birdflow.data.cf`) carry the same maps.
"""

from __future__ import annotations

import os
from pathlib import Path

from birdflow.data.geotiff import grid_transform, write_grid_geotiff, write_weekly_geotiff

__all__ = ["export_geotiffs", "grid_transform", "write_grid_geotiff", "write_weekly_geotiff"]


def export_geotiffs(model, out_dir: str | os.PathLike) -> list[Path]:
    """Model and S&T weekly distributions of ``model`` as GeoTIFFs in ``out_dir``."""
    out_dir = Path(out_dir)
    ds = model.data
    code = ds.attrs.get("species_code", "model")
    return [
        write_weekly_geotiff(ds, model.distrs(), out_dir / f"{code}_model_distr.tif",
                             description="BirdFlow model distribution of each week"),
        write_weekly_geotiff(ds, ds["distr"].values, out_dir / f"{code}_st_distr.tif",
                             description="eBird S&T distribution of each week (training target)"),
    ]


def export_run_geotiffs(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """:func:`export_geotiffs` of a run directory's model into ``out`` (default: the run dir).

    What ``python -m birdflow.export run=<dir> format=geotiff`` runs.
    """
    from birdflow.model.fitted import load_model

    return export_geotiffs(load_model(run_dir), Path(out) if out is not None else Path(run_dir))
