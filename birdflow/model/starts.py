"""Where routes and predictions start: points (lon/lat), distributions, or sampled cells.

Every start is checked against the model at the start week: a point must fall in an active
cell that the chain can move from in that week (inside its dynamic mask, with probability
onward), else a one-line :class:`DataError` names the point, the week and the fix.
"""

from __future__ import annotations

import numpy as np

from birdflow.data.grid import from_lonlat, snap_to_cells
from birdflow.errors import ConfigError, DataError


def lonlat_to_cell(ds, lon: float, lat: float) -> int:
    """Index of the active cell holding (lon, lat) in degrees; DataError outside the grid."""
    x, y = from_lonlat([lon], [lat], ds.attrs.get("crs_wkt") or ds.rio.crs)
    cell = int(snap_to_cells(x, y, ds["x"].values, ds["y"].values, ds["static_mask"].values)[0])
    if cell < 0:
        raise DataError(f"lon={lon}, lat={lat}: not in an active cell of the model grid "
                        f"(lon {ds['cell_lon'].values.min():.1f}..{ds['cell_lon'].values.max():.1f}, "
                        f"lat {ds['cell_lat'].values.min():.1f}..{ds['cell_lat'].values.max():.1f}); "
                        "choose a location inside the species' range")
    return cell


def as_points(lonlat) -> np.ndarray:
    """(lon, lat) or a sequence of them -> (k, 2) float array; ConfigError otherwise."""
    pts = np.atleast_2d(np.asarray(lonlat, dtype=float))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ConfigError(f"lonlat={lonlat!r}: give (lon, lat) in degrees or a list of such pairs")
    return pts


def point_cells(model, lonlat, position: int, support: np.ndarray | None = None) -> np.ndarray:
    """Active cells of the start points, each checked against the week at ``position``."""
    weeks = model.data["week"].values
    if support is None:
        support = model.distr_at(position) > 0
    cells = []
    for lon, lat in as_points(lonlat):
        cell = lonlat_to_cell(model.data, lon, lat)
        if not model.data["dynamic_mask"].values[position, cell] or not support[cell]:
            raise DataError(f"lon={lon:g}, lat={lat:g}: cell {cell + 1} is outside the model's "
                            f"mask in S&T week {int(weeks[position])} (the species is absent "
                            "there); choose another location or date")
        cells.append(cell)
    return np.asarray(cells, dtype=np.int64)


def start_distributions(model, distr_or_point, position: int) -> tuple[np.ndarray, bool]:
    """(k, n_cells) start distributions and whether a single one was given."""
    arr = np.asarray(distr_or_point, dtype=float)
    if arr.shape[-1] == model.n_cells and arr.ndim in (1, 2) and model.n_cells != 2:
        if np.any(arr < 0) or not np.all(np.isfinite(arr)):
            raise DataError("distr: a distribution needs finite, non-negative values")
        return np.atleast_2d(arr), arr.ndim == 1
    if arr.shape[-1] != 2:
        raise ConfigError(f"distr_or_point of shape {arr.shape}: give a distribution over the "
                          f"model's {model.n_cells} active cells, or (lon, lat) point(s)")
    cells = point_cells(model, arr, position)
    out = np.zeros((len(cells), model.n_cells))
    out[np.arange(len(cells)), cells] = 1.0
    return out, arr.ndim == 1


def start_cells(model, tl, n: int, *, lonlat=None, distr=None, from_marginals: bool = False,
                rng: np.random.Generator) -> np.ndarray:
    """Start cells of the routes: each point ``n`` times, or ``n`` draws from a distribution.

    Draws are restricted to cells the chain can move from in the start week (renormalised).
    """
    if lonlat is not None and distr is not None:
        raise ConfigError("give lonlat= or distr= for the route starts, not both")
    support = model.support(tl)
    if lonlat is not None:
        return np.repeat(point_cells(model, lonlat, tl.positions[0], support), n)
    if distr is not None:
        p = np.asarray(distr, dtype=float)
        if p.shape != (model.n_cells,) or np.any(p < 0) or not np.all(np.isfinite(p)):
            raise DataError(f"distr: expected {model.n_cells} non-negative values (one per active "
                            f"cell), got shape {p.shape}")
    elif from_marginals:
        p = model.distr_at(tl.positions[0])
    else:
        p = model.data["distr"].values[tl.positions[0]]
    p = np.where(support, p, 0.0)
    if p.sum() <= 0:
        raise DataError(f"the start distribution has no mass on cells of S&T week "
                        f"{int(tl.weeks[0])} that the model can move from; pass another one")
    return rng.choice(model.n_cells, size=n, p=p / p.sum())
