"""Which cells a bird can reach in a week: great-circle neighbourhoods without n² matrices.

Cell centres become unit vectors on the sphere; the straight-line (chord) distance between
two of them is a monotone function of their great-circle distance,
``chord = 2 sin(d / (2 R))`` (unit sphere, ``d`` in km, ``R`` = :data:`EARTH_RADIUS_KM`), so a
KD-tree over the vectors (``scipy.spatial.cKDTree``) answers "every cell within ``d`` km"
and "the ``k`` nearest cells" exactly, in O(n log n + pairs) time and memory, never building
an (n_cells, n_cells) matrix. Used by the sparse transition layout
(:mod:`birdflow.model.neighbours`) and by the parameter budget
(:mod:`birdflow.data.resolution`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.spatial import cKDTree

from birdflow.data.grid import EARTH_RADIUS_KM

RADIUS_SLACK = 1e-9  # relative: a cell exactly at the radius (round-off) is inside
DEFAULT_MAX_WEEKLY_KM = 1500.0  # our assumption (see birdflow.model.neighbours)
MIN_DEFAULT_CELLS = 3  # the auto radius covers at least 3 cells


def default_radius_km(res_km: float, max_weekly_km: float | None = None) -> float:
    """The ``auto`` radius: ``max_weekly_km`` if given, else max(1,500 km, 3 cells)."""
    if max_weekly_km is not None:
        return float(max_weekly_km)
    return max(DEFAULT_MAX_WEEKLY_KM, MIN_DEFAULT_CELLS * float(res_km))


def resolve_radius_km(setting, res_km: float, species: Mapping) -> float | None:
    """``model.neighbourhood_km`` in km: None (dense), a number, or ``auto`` for the species.

    ``auto`` = ``species.max_weekly_km`` (for the synthetic species' default ``flyway`` scene:
    per unit of ``species.synthetic.size``, as its whole scene scales; other scenes, e.g.
    ``continental``, keep their weekly hop at every size: km as given), else
    :func:`default_radius_km`.
    """
    if setting is None or setting != "auto":
        return None if setting is None else float(setting)
    km = species.get("max_weekly_km")
    node = species.get("synthetic") or {}
    if km is not None and species.get("code") == "synthetic" and node.get("scene",
                                                                         "flyway") == "flyway":
        km = float(km) * float(node.get("size", 1.0))
    return default_radius_km(res_km, km)


def unit_vectors(lon, lat) -> np.ndarray:
    """(n, 3) points on the unit sphere for cell centres in degrees."""
    lon, lat = np.radians(np.asarray(lon, float)), np.radians(np.asarray(lat, float))
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def chord_of_km(d_km) -> np.ndarray:
    """Unit-sphere chord length of a great-circle distance in km (monotone; capped at pi R)."""
    d = np.minimum(np.asarray(d_km, float), np.pi * EARTH_RADIUS_KM)
    return 2.0 * np.sin(d / (2.0 * EARTH_RADIUS_KM))


def km_of_chord(chord) -> np.ndarray:
    """Great-circle distance in km of a unit-sphere chord length (inverse of :func:`chord_of_km`)."""
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord, float) / 2.0, 0.0, 1.0))


def _ball_chord(radius_km: float) -> float:
    """The chord length a KD-tree ball query uses for ``radius_km`` (with the round-off slack)."""
    return float(chord_of_km(radius_km)) * (1.0 + RADIUS_SLACK)


def within_radius(src: np.ndarray, dst: np.ndarray, radius_km: float) -> list[np.ndarray]:
    """For each source point, the sorted indices of destination points within ``radius_km``.

    Args:
        src, dst: (n_src, 3), (n_dst, 3) unit vectors (:func:`unit_vectors`).
        radius_km: great-circle radius in km (inclusive, up to round-off).

    Returns:
        n_src int arrays of indices into ``dst``, ascending.
    """
    if len(src) == 0 or len(dst) == 0:
        return [np.zeros(0, np.int64) for _ in range(len(src))]
    r = _ball_chord(radius_km)
    hits = cKDTree(dst).query_ball_point(src, r, return_sorted=True)
    return [np.asarray(h, dtype=np.int64) for h in hits]


def longest_row(src: np.ndarray, dst: np.ndarray, radius_km: float) -> int:
    """The most destination points within ``radius_km`` of one source point (0 if none)."""
    if len(src) == 0 or len(dst) == 0:
        return 0
    r = _ball_chord(radius_km)
    return int(np.max(cKDTree(dst).query_ball_point(src, r, return_length=True)))


def nearest(src: np.ndarray, dst: np.ndarray, k: int) -> np.ndarray:
    """(n_src, min(k, n_dst)) indices of each source's nearest destinations, ascending index."""
    k = min(int(k), len(dst))
    _, idx = cKDTree(dst).query(src, k=k)
    return np.sort(np.asarray(idx, np.int64).reshape(len(src), k), axis=1)


def nearest_km(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(n_dst,) great-circle km from each destination point to its nearest source point."""
    chord, _ = cKDTree(src).query(dst, k=1)
    return km_of_chord(chord)


def n_pairs_within(dynamic_mask: np.ndarray, lon, lat, radius_km: float,
                   cyclic: bool = True) -> int:
    """Number of (week-t cell, week-(t+1) cell) pairs within ``radius_km``, summed over transitions.

    Args:
        dynamic_mask: (n_weeks, n_cells) bool, the active cells of each week.
        lon, lat: (n_cells,) cell centres in degrees.
        radius_km: neighbourhood radius in km.
        cyclic: include the last -> first week transition.
    """
    dm = np.asarray(dynamic_mask, bool)
    xyz = unit_vectors(lon, lat)
    r = _ball_chord(radius_km)
    n_tr = dm.shape[0] if cyclic else dm.shape[0] - 1
    total = 0
    for t in range(n_tr):
        src, dst = xyz[dm[t]], xyz[dm[(t + 1) % dm.shape[0]]]
        if len(src) and len(dst):
            total += int(cKDTree(dst).query_ball_point(src, r, return_length=True).sum())
    return total


def sparse_n_parameters(dynamic_mask: np.ndarray, lon, lat, radius_km: float,
                        cyclic: bool = True) -> int:
    """Logits of a sparse model: n_1 + the (from, to) pairs within ``radius_km`` (all transitions).

    The sparse counterpart of :func:`birdflow.data.bfdata.n_parameters` (n_1 + sum n_t n_{t+1}).
    """
    dm = np.asarray(dynamic_mask, bool)
    return int(dm[0].sum()) + n_pairs_within(dm, lon, lat, radius_km, cyclic)
