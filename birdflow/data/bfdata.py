"""BirdFlowData: the weekly distributions over grid cells that the model is trained on.

An ``xarray.Dataset`` with

==================  ================  ======================================================
variable            dims              meaning
==================  ================  ======================================================
distr               (week, cell)      S&T distribution of week t over active cells; sums to 1
dynamic_mask        (week, cell)      bool, ``distr > 0``: the cells taking part in week t
static_mask         (y, x)            bool, active cells (non-zero in some week)
cell_row, cell_col  (cell,)           grid row (0 = north) and column of each active cell
cell_x, cell_y      (cell,)           cell centre, projected metres
cell_lon, cell_lat  (cell,)           cell centre, degrees WGS84
distance_km         (cell, cell_to)   great-circle km between cell centres (only up to
                                      ``DISTANCE_MATRIX_MAX_CELLS`` cells; see
                                      :func:`distances_km`)
totals              (week,)           per-week divisor used to normalise the raw abundance
uci, lci            (week, cell)      optional upper/lower bounds divided by ``totals``
percent_lost        (week,)           optional: % of density removed by a clip polygon
==================  ================  ======================================================

Coordinates: ``week`` (S&T week numbers, 1-based), ``date`` (week centre), ``x``/``y``
(column/row centres, metres; y decreasing), and the CRS in ``spatial_ref`` (rioxarray's
convention, also as the ``crs_wkt`` attribute). Attributes: ``species_code``,
``version_year``, ``res_km``, ``cyclic`` (1 when all 52 weeks are present and the 52 -> 1
transition is modelled), ``source`` and ``cache_key``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pyproj import CRS

from birdflow.data.cf import from_cf, to_cf
from birdflow.data.grid import distance_matrix_km, great_circle_km, to_lonlat
from birdflow.data.weeks import increasing_dates
from birdflow.errors import DataError
from birdflow.io import atomic_hdf5

REQUIRED_VARS = ("distr", "dynamic_mask", "static_mask", "cell_row", "cell_col", "cell_x",
                 "cell_y", "cell_lon", "cell_lat", "totals")
# distance_km is stored up to this many cells (n^2 float64: 512 MB at 8,000); beyond, the
# distances are computed from the cell coordinates where needed (:func:`distances_km`)
DISTANCE_MATRIX_MAX_CELLS = 8000


def make_bfdata(
    abundance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    crs,
    weeks: np.ndarray,
    dates,
    *,
    species_code: str,
    version_year: int,
    res_km: float,
    source: str = "",
    uci: np.ndarray | None = None,
    lci: np.ndarray | None = None,
    percent_lost: np.ndarray | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Build a validated BirdFlowData from a (week, y, x) abundance cube on the final grid.

    Args:
        abundance: (week, nrow, ncol) non-negative relative abundance; NaN = no data (-> 0).
        x, y: column and row centres in metres of ``crs`` (y from north to south).
        crs: anything ``pyproj.CRS.from_user_input`` takes.
        weeks: S&T week numbers (1..52) of the cube's first axis; dates: their centre dates
            (moved by whole years where needed so that they increase: a season crossing
            new year, weeks 45..52, 1..10, gets its January dates in the next year).
        species_code, version_year, res_km, source: recorded as attributes.
        uci, lci: optional bounds cubes shaped like ``abundance`` (divided by the same totals).
    """
    abundance = np.asarray(abundance, dtype=np.float64)
    if abundance.ndim != 3:
        raise DataError(f"{source or 'abundance'}: expected a (week, y, x) cube, got shape {abundance.shape}")
    if np.nanmin(abundance, initial=0.0) < 0:
        raise DataError(f"{source or 'abundance'}: negative abundance values ({np.nanmin(abundance):.3g}); "
                        "S&T abundance is >= 0 — check the nodata value or pass the right file")
    cube = np.nan_to_num(abundance, nan=0.0)
    static = (cube > 0).any(axis=0)
    rows, cols = np.nonzero(static)  # row-major from the north-west corner
    flat = cube[:, rows, cols]
    totals = flat.sum(axis=1)
    weeks = np.asarray(weeks, dtype=np.int64)
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        raise DataError(f"{source or 'abundance'}: week(s) {weeks[empty].tolist()} are all zero/NaN after "
                        "masking; choose a season that excludes them (start_week/end_week), a larger "
                        "clip region, or a species whose S&T weeks all have data")
    distr = flat / totals[:, None]
    crs = CRS.from_user_input(crs)
    cx, cy = np.asarray(x, float)[cols], np.asarray(y, float)[rows]
    lon, lat = to_lonlat(cx, cy, crs)
    ds = xr.Dataset(
        {
            "distr": (("week", "cell"), distr),
            "dynamic_mask": (("week", "cell"), distr > 0),
            "static_mask": (("y", "x"), static),
            "cell_row": ("cell", rows.astype(np.int32)),
            "cell_col": ("cell", cols.astype(np.int32)),
            "cell_x": ("cell", cx),
            "cell_y": ("cell", cy),
            "cell_lon": ("cell", lon),
            "cell_lat": ("cell", lat),
            "totals": ("week", totals),
        },
        coords={"week": weeks, "date": ("week", increasing_dates(dates).values.astype("datetime64[ns]")),
                "x": np.asarray(x, float), "y": np.asarray(y, float)},
    )
    if len(lon) <= DISTANCE_MATRIX_MAX_CELLS:
        ds["distance_km"] = (("cell", "cell_to"), distance_matrix_km(lon, lat))
    for name, bound in (("uci", uci), ("lci", lci)):
        if bound is not None:
            b = np.nan_to_num(np.asarray(bound, dtype=np.float64), nan=0.0)[:, rows, cols]
            ds[name] = (("week", "cell"), b / totals[:, None])
    if percent_lost is not None:
        ds["percent_lost"] = ("week", np.asarray(percent_lost, dtype=np.float64))
    ds = ds.rio.write_crs(crs.to_wkt())
    ds.attrs.update(
        species_code=str(species_code),
        version_year=int(version_year),
        res_km=float(res_km),
        cyclic=int(len(weeks) == 52),
        source=str(source),
        crs_wkt=crs.to_wkt(),
        **(attrs or {}),
    )
    validate_bfdata(ds, source)
    return ds


def distances_km(ds: xr.Dataset, to_cells: np.ndarray | None = None) -> np.ndarray:
    """Great-circle km from every active cell to ``to_cells`` (all cells when None).

    Returns (n_cells, len(to_cells)) float64: read from ``distance_km`` when the file holds it,
    else computed from ``cell_lon``/``cell_lat`` (files above ``DISTANCE_MATRIX_MAX_CELLS``).
    """
    if "distance_km" in ds:
        d = np.asarray(ds["distance_km"].values, dtype=np.float64)
        return d if to_cells is None else d[:, np.asarray(to_cells)]
    lon, lat = ds["cell_lon"].values, ds["cell_lat"].values
    if to_cells is None:
        return distance_matrix_km(lon, lat)
    to_cells = np.asarray(to_cells)
    return great_circle_km(lon[:, None], lat[:, None], lon[None, to_cells], lat[None, to_cells])


def validate_bfdata(ds: xr.Dataset, source: str = "") -> None:
    """Raise DataError unless ``ds`` satisfies the BirdFlowData invariants."""
    where = source or ds.attrs.get("source", "BirdFlowData")
    missing = [v for v in REQUIRED_VARS if v not in ds]
    if missing:
        raise DataError(f"{where}: not a BirdFlowData file, missing variables {missing}; "
                        "regenerate it with `python -m birdflow.preprocess`")
    distr = ds["distr"].values
    sums = distr.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = ds["week"].values[~np.isclose(sums, 1.0, atol=1e-6)].tolist()
        raise DataError(f"{where}: distr of week(s) {bad} does not sum to 1; regenerate the file")
    if not np.array_equal(ds["dynamic_mask"].values, distr > 0):
        raise DataError(f"{where}: dynamic_mask differs from distr > 0; regenerate the file")
    if int(ds["static_mask"].values.sum()) != ds.sizes["cell"]:
        raise DataError(f"{where}: static_mask has {int(ds['static_mask'].values.sum())} cells but "
                        f"distr has {ds.sizes['cell']}; regenerate the file")
    if ds.rio.crs is None:
        raise DataError(f"{where}: no CRS recorded; regenerate the file")


def save_bfdata(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write BirdFlowData to CF-1.8 NetCDF atomically (temporary name, then rename).

    Besides the variables above the file holds ``distr_map`` (and ``uci_map``/``lci_map``):
    the distributions on (week, y, x) with the CRS, for GIS tools (:mod:`birdflow.data.cf`).
    """
    maps = {v: v + "_map" for v in ("distr", "uci", "lci") if v in ds}
    out = to_cf(ds, maps, title=f"BirdFlowData {ds.attrs.get('species_code', '')}: eBird S&T "
                "weekly distributions on the model grid")
    for name in ("dynamic_mask", "static_mask"):
        out[name] = out[name].astype(np.int8)
        out[name].attrs["flag_meaning"] = "bool"
    with atomic_hdf5(path, int(out.nbytes)) as target:
        out.to_netcdf(target, engine="h5netcdf")
    return Path(path)


def load_bfdata(path: str | os.PathLike) -> xr.Dataset:
    """Read BirdFlowData written by :func:`save_bfdata`, CRS included, and validate it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: BirdFlowData file not found; create it with "
                        "`python -m birdflow.preprocess species=<name>`")
    try:
        with xr.open_dataset(path, engine="h5netcdf", decode_coords="all") as f:
            ds = f.load()
    except (OSError, ValueError) as e:
        first = " ".join(str(e).split())[:160]
        raise DataError(f"{path}: not a readable NetCDF file ({first}); delete it and re-run "
                        "preprocessing (in a run dir: restore it from a copy of the run)") from None
    for name in ("dynamic_mask", "static_mask"):
        if name in ds:
            ds[name] = ds[name].astype(bool)
            ds[name].attrs.pop("flag_meaning", None)
    ds = from_cf(ds)
    if "date" in ds.coords:  # files written before dates were made increasing
        ds = ds.assign_coords(date=("week", increasing_dates(ds["date"].values).values))
    validate_bfdata(ds, str(path))
    return ds


def n_parameters(dynamic_mask: np.ndarray, cyclic: bool = True) -> int:
    """BirdFlowR's parameter count n_1 + sum_t n_t n_{t+1} (cyclic: n_{T+1} = n_1)."""
    n = np.asarray(dynamic_mask).sum(axis=1).astype(np.int64)
    nxt = np.roll(n, -1) if cyclic else n[1:]
    return int(n[0] + (n[: len(nxt)] * nxt).sum())
