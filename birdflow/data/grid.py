"""Grid geometry: cell centres, lon/lat, great-circle distances, point -> cell snapping.

Cells are the static mask's TRUE pixels numbered row-major from the north-west corner
(numpy ``np.nonzero(mask)`` order), the same order BirdFlowR uses.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer

EARTH_RADIUS_KM = 6371.01  # the spherical radius BirdFlowR's s2 distances use
EDGE_TOLERANCE_M = 1e-3  # a point this close to the east/south outer edge is on it (round-off)


def great_circle_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Haversine distance in km between points given in degrees (broadcasting)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(v, dtype=float)) for v in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def distance_matrix_km(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(n, n) great-circle distances in km between the points (lon[i], lat[i])."""
    return great_circle_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :])


def to_lonlat(x, y, crs) -> tuple[np.ndarray, np.ndarray]:
    """Projected coordinates (metres, in ``crs``) -> (lon, lat) degrees on WGS84."""
    tr = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    lon, lat = tr.transform(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return np.asarray(lon), np.asarray(lat)


def from_lonlat(lon, lat, crs) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) degrees on WGS84 -> projected coordinates in ``crs``."""
    tr = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_user_input(crs), always_xy=True)
    x, y = tr.transform(np.asarray(lon, dtype=float), np.asarray(lat, dtype=float))
    return np.asarray(x), np.asarray(y)


def snap_to_cells(x, y, x_centres, y_centres, static_mask, res_m: float | None = None) -> np.ndarray:
    """Cell index (0-based, row-major over the static mask) of projected points; -1 outside.

    ``x_centres``/``y_centres`` are the grid's column and row centres (y decreasing from the
    north). A point on the east or south outer edge (within ``EDGE_TOLERANCE_M``, an absolute
    tolerance in metres) belongs to the last column/row; beyond it a point is outside.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    xres = abs(float(x_centres[1] - x_centres[0])) if len(x_centres) > 1 else None
    yres = abs(float(y_centres[0] - y_centres[1])) if len(y_centres) > 1 else None
    # a one-row or one-column grid takes the other axis' resolution (cells are square), or res_m
    xres = xres or yres or res_m
    yres = yres or xres or res_m
    if xres is None:
        raise ValueError("snap_to_cells: a 1 x 1 grid needs res_m (the cell size in metres)")
    xmin = float(x_centres[0]) - xres / 2
    ymax = float(y_centres[0]) + yres / 2
    ncol, nrow = len(x_centres), len(y_centres)
    col = np.floor((x - xmin) / xres)
    row = np.floor((ymax - y) / yres)
    col = np.where(np.abs(x - (xmin + ncol * xres)) <= EDGE_TOLERANCE_M, ncol - 1, col)
    row = np.where(np.abs(y - (ymax - nrow * yres)) <= EDGE_TOLERANCE_M, nrow - 1, row)
    ok = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < ncol) & (row >= 0) & (row < nrow)
    cell_id = np.full(static_mask.shape, -1, dtype=np.int64)
    cell_id[static_mask] = np.arange(int(static_mask.sum()))
    out = np.full(x.shape, -1, dtype=np.int64)
    out[ok] = cell_id[row[ok].astype(int), col[ok].astype(int)]
    return out
