"""Flux across grid-cell boundaries and movement vectors, per weekly transition.

Each joint entry ``M_t[i, j]`` (the proportion of the population that is in cell i in week
t and in cell j in week t + 1) is taken to fly the straight line between the two cell
centres on the model grid. Every grid-cell boundary the line crosses carries that mass:

* ``net_east[t, r, c]``: mass crossing the boundary between cells (r, c) and (r, c + 1),
  eastward minus westward; ``net_north[t, r, c]``: across the boundary between (r, c) and
  (r - 1, c) (the north edge of (r, c)), northward minus southward;
* ``gross_east`` / ``gross_north``: the same without the sign (traffic in both directions).

Units: proportion of the population per week (divide by the edge length, ``res_km``, for
BirdFlowR's BMTR-like "per km"). Lines are shifted by a tiny irrational offset so they never
pass exactly through a cell corner; then the flux is exactly conservative: for every cell,
net outflow over its four edges = (its mass in week t) - (its mass in week t + 1).

Movement vectors (BirdFlowR's ``calc_movement_vectors``): for each cell of week t the
transition-weighted mean destination, as a displacement ``move_dx``, ``move_dy`` (metres),
weighted by the S&T density of the start cell (``move_weight``).

``flux_dataset(model)`` holds all of them on (transition, y, x) with the start week's date
and number; :func:`write_flux` writes it as CF NetCDF and one GeoTIFF per quantity.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from birdflow.data.cf import CONVENTIONS, GRID_MAPPING
from birdflow.data.geotiff import write_grid_geotiff
from birdflow.io import atomic_hdf5
from birdflow.model import joints
from birdflow.model.fitted import BirdFlowModel

NUDGE = (1e-7 * np.sqrt(2.0), 1e-7 * np.sqrt(3.0))  # (col, row) offset: never through a corner
FLUX_VARS = ("net_east", "net_north", "gross_east", "gross_north")
MOVE_VARS = ("move_dx", "move_dy", "move_weight")


def _crossings(c0, r0, c1, r1, mass, nrow: int, ncol: int):
    """Net and gross (east, north) flux of straight moves between (col, row) grid positions."""
    net_e, gross_e = np.zeros((nrow, ncol)), np.zeros((nrow, ncol))
    net_n, gross_n = np.zeros((nrow, ncol)), np.zeros((nrow, ncol))
    c0, r0 = c0 + NUDGE[0], r0 + NUDGE[1]
    c1, r1 = c1 + NUDGE[0], r1 + NUDGE[1]
    # vertical boundaries at col = k + 0.5 between floor(min) .. ; repeat each move per crossing
    for axis in ("east", "north"):
        a0, a1, b0, b1 = (c0, c1, r0, r1) if axis == "east" else (r0, r1, c0, c1)
        lo, hi = np.minimum(a0, a1), np.maximum(a0, a1)
        first = np.ceil(lo - 0.5)  # first boundary index k with k + 0.5 > lo
        count = np.maximum(np.floor(hi - 0.5) - first + 1, 0).astype(int)
        idx = np.repeat(np.arange(len(mass)), count)
        if not idx.size:
            continue
        k = first[idx] + (np.arange(idx.size) - np.repeat(np.cumsum(count) - count, count))
        s = (k + 0.5 - a0[idx]) / (a1[idx] - a0[idx])
        other = np.floor(b0[idx] + s * (b1[idx] - b0[idx]) + 0.5).astype(int)
        forward = a1[idx] > a0[idx]  # east: increasing col; rows: increasing row = southward
        m = mass[idx]
        if axis == "east":  # boundary between col k and k + 1, stored on cell (row, k)
            np.add.at(net_e, (other, k.astype(int)), np.where(forward, m, -m))
            np.add.at(gross_e, (other, k.astype(int)), m)
        else:  # boundary between row k and k + 1 = north edge of (k + 1, col); north positive
            np.add.at(net_n, (k.astype(int) + 1, other), np.where(forward, -m, m))
            np.add.at(gross_n, (k.astype(int) + 1, other), m)
    return net_e, net_n, gross_e, gross_n


def transition_flux(model: BirdFlowModel, t: int) -> dict[str, np.ndarray]:
    """Flux and movement fields of transition ``t`` (0-based), each (nrow, ncol)."""
    ds, idx = model.data, model.index
    nrow, ncol = ds.sizes["y"], ds.sizes["x"]
    sf, st = idx.slot_cell[t % idx.n_weeks], idx.slot_cell[(t + 1) % idx.n_weeks]
    fi, ti, m = joints.nonzero_entries(idx, model.marginals, t)  # dense or sparse alike
    a, b = sf[fi], st[ti]
    row, col = ds["cell_row"].values, ds["cell_col"].values
    out = dict(zip(FLUX_VARS, _crossings(col[a].astype(float), row[a].astype(float),
                                         col[b].astype(float), row[b].astype(float), m,
                                         nrow, ncol), strict=True))
    mass = np.bincount(a, weights=m, minlength=model.n_cells)
    cx, cy = ds["cell_x"].values, ds["cell_y"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.bincount(a, weights=m * (cx[b] - cx[a]), minlength=model.n_cells) / mass
        dy = np.bincount(a, weights=m * (cy[b] - cy[a]), minlength=model.n_cells) / mass
    weight = np.where(mass > 0, ds["distr"].values[t % idx.n_weeks], np.nan)
    for name, values in (("move_dx", dx), ("move_dy", dy), ("move_weight", weight)):
        grid = np.full((nrow, ncol), np.nan)
        grid[row, col] = np.where(mass > 0, values, np.nan)
        out[name] = grid
    return out


def flux_dataset(model: BirdFlowModel) -> xr.Dataset:
    """All transitions' flux and movement fields on (transition, y, x), CF attributes set."""
    ds = model.data
    fields = [transition_flux(model, t) for t in range(model.n_transitions)]
    pos = np.arange(model.n_transitions) % model.index.n_weeks
    out = xr.Dataset(
        {name: (("transition", "y", "x"), np.stack([f[name] for f in fields]))
         for name in (*FLUX_VARS, *MOVE_VARS)},
        coords={"transition": np.arange(1, model.n_transitions + 1),
                "week": ("transition", ds["week"].values[pos]),
                "date": ("transition", ds["date"].values[pos]),
                "x": ds["x"].values, "y": ds["y"].values},
    )
    out = out.rio.write_crs(ds.attrs.get("crs_wkt") or ds.rio.crs.to_wkt())
    units = {"net_east": ("1", "net eastward flux across the east edge of the cell"),
             "net_north": ("1", "net northward flux across the north edge of the cell"),
             "gross_east": ("1", "flux in both directions across the east edge of the cell"),
             "gross_north": ("1", "flux in both directions across the north edge of the cell"),
             "move_dx": ("m", "mean eastward displacement of birds leaving the cell"),
             "move_dy": ("m", "mean northward displacement of birds leaving the cell"),
             "move_weight": ("1", "S&T density of the start cell (movement vector weight)")}
    for name, (u, long_name) in units.items():
        per_week = " (proportion of population per week)" if name in FLUX_VARS else ""
        out[name].attrs = {"units": u, "long_name": long_name + per_week}
        out[name].encoding["grid_mapping"] = GRID_MAPPING  # the CRS variable rioxarray wrote
    out["x"].attrs = {"units": "m", "standard_name": "projection_x_coordinate", "axis": "X"}
    out["y"].attrs = {"units": "m", "standard_name": "projection_y_coordinate", "axis": "Y"}
    out["transition"].attrs = {"units": "1", "long_name": "transition t: week t -> week t + 1"}
    out["date"].attrs = {"standard_name": "time", "long_name": "centre date of the start week"}
    out.attrs = {"Conventions": CONVENTIONS, "species_code": ds.attrs.get("species_code", ""),
                 "title": "BirdFlow flux across grid-cell boundaries and movement vectors"}
    return out


def write_flux(flux: xr.Dataset, model: BirdFlowModel, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``flux.nc`` and ``flux_<var>.tif`` (one band per transition) into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = []
    with atomic_hdf5(out_dir / "flux.nc", int(flux.nbytes)) as target:
        flux.to_netcdf(target, engine="h5netcdf")
    paths.append(out_dir / "flux.nc")
    dates, weeks = pd.DatetimeIndex(flux["date"].values), flux["week"].values
    for name in (*FLUX_VARS, "move_dx", "move_dy"):
        paths.append(write_grid_geotiff(model.data, flux[name].values, out_dir / f"flux_{name}.tif",
                                        dates=dates, weeks=weeks, units=flux[name].attrs["units"],
                                        description=flux[name].attrs["long_name"]))
    return paths
