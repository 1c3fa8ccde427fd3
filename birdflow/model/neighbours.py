"""Neighbourhood-sparse transitions: which week-(t+1) cells each week-t cell may move to.

A sparse model keeps, per transition, only the moves from a cell to the next week's active
cells within ``model.neighbourhood_km`` km (great-circle distance between cell centres), or
to its ``model.neighbours_k`` nearest ones. The table ``nbr`` (n_transitions, n_max, K)
(:class:`birdflow.model.markov.WeekIndex`) holds the week-(t+1) slots of each row's
neighbours in ascending slot order, -1 padding; it is built week by week with a KD-tree
(:mod:`birdflow.data.reach`), never through an (n_cells, n_cells) matrix.

Radius rule (``model.neighbourhood_km``):

- ``null``: dense transitions (every pair of consecutive weeks' cells), as BirdFlowR;
- a number: that radius in km; it must be at least one cell (``res_km``);
- ``auto``: the species' ``species.max_weekly_km`` when set, else
  ``max(1,500 km, 3 cells)``. 1,500 km a week is *our assumption* of a conservative upper
  bound of weekly displacement of long-distance passerine migrants (nightly flights of a few
  hundred km on a few nights a week; it is not a quantity fitted to data here): check it
  against tracking data of your species and set ``species.max_weekly_km``. The synthetic
  species sets 1,100 km per unit of ``species.synthetic.size`` (its scene, flyway and
  dispersal all scale with ``size``): at size 1 the true chain puts at most 4.2e-4 of a
  week's mass on moves longer than that, all of it from its 0.2 % uniform floor, which spreads
  mass over *every* pair of cells, so no radius short of the range's diameter reaches all of
  the truth's mass. Its ``continental`` scene (``species=synthetic_continental``) is the
  opposite: its truth is exactly zero beyond 250 km (at every ``size``), and ``auto`` keeps
  exactly the truth's pairs.

Never silently dropping mass: every week-(t+1) cell with S&T mass must be reachable from some
week-t cell with mass, and every week-t cell must reach some week-(t+1) cell; otherwise
:func:`build_neighbours` raises a ConfigError naming the week, how many cells and how much
S&T mass are cut off, and the smallest radius (or k) that reaches them.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from birdflow.data import reach
from birdflow.data.reach import DEFAULT_MAX_WEEKLY_KM, default_radius_km, resolve_radius_km
from birdflow.errors import ConfigError, DataError
from birdflow.model.markov import WeekIndex

ROW_CHUNK = 4096  # source cells per KD-tree ball query (memory of its Python lists)

__all__ = ["DEFAULT_MAX_WEEKLY_KM", "build_neighbours", "default_radius_km", "resolve_radius_km",
           "sparse_index", "summary"]


def _weeks(ds: xr.Dataset, index: WeekIndex):
    """Per transition: (S&T week from, S&T week to, week-t cells, week-(t+1) cells)."""
    weeks = ds["week"].values
    for t in range(index.n_transitions):
        u = (t + 1) % index.n_weeks
        a, b = index.slot_cell[t], index.slot_cell[u]
        yield t, int(weeks[t]), int(weeks[u]), a[a >= 0], b[b >= 0]


def _check_radius(ds, index, xyz, radius_km: float) -> None:
    """ConfigError when the radius strands a week-t cell or leaves a week-(t+1) cell unreachable."""
    distr = ds["distr"].values
    needed, first, n_bad = 0.0, None, 0
    for t, w0, w1, a, b in _weeks(ds, index):
        d_in = reach.nearest_km(xyz[a], xyz[b])  # each target's nearest source
        d_out = reach.nearest_km(xyz[b], xyz[a])  # each source's nearest target
        needed = max(needed, float(d_in.max()), float(d_out.max()))
        cut_in, cut_out = d_in > radius_km * (1 + reach.RADIUS_SLACK), d_out > radius_km * (
            1 + reach.RADIUS_SLACK)
        n_bad += bool(cut_in.any() or cut_out.any())
        if first is None and (cut_in.any() or cut_out.any()):
            first = (w0, w1, int(cut_in.sum()), float(distr[(t + 1) % index.n_weeks, b[cut_in]].sum()),
                     int(cut_out.sum()), float(distr[t, a[cut_out]].sum()))
    if first is None:
        return
    w0, w1, n_in, m_in, n_out, m_out = first
    what = []
    if n_in:
        what.append(f"{n_in} week-{w1} cell(s) holding {100 * m_in:.3g}% of its S&T mass are "
                    f"unreachable from every week-{w0} cell")
    if n_out:
        what.append(f"{n_out} week-{w0} cell(s) holding {100 * m_out:.3g}% of its S&T mass reach "
                    f"no week-{w1} cell")
    more = f" ({n_bad - 1} more transition(s) like it)" if n_bad > 1 else ""
    raise ConfigError(f"model.neighbourhood_km={radius_km:g}: transition week {w0} -> {w1}: "
                      f"{' and '.join(what)} (nothing within {radius_km:g} km){more}; the smallest "
                      f"radius that reaches every cell in every week is {np.ceil(needed):.0f} km: "
                      f"set model.neighbourhood_km>={np.ceil(needed):.0f} (or null for dense)")


def _unreachable_by_k(ds, index, xyz, k: int):
    """First (t, w0, w1, cells) with week-(t+1) cells no week-t cell has among its k nearest."""
    for t, w0, w1, a, b in _weeks(ds, index):
        hit = np.zeros(len(b), bool)
        hit[reach.nearest(xyz[a], xyz[b], k).ravel()] = True
        if not hit.all():
            return t, w0, w1, b[~hit]
    return None


def _check_k(ds, index, xyz, k: int) -> None:
    bad = _unreachable_by_k(ds, index, xyz, k)
    if bad is None:
        return
    t, w0, w1, cells = bad
    lo, hi = k, 2 * k
    while _unreachable_by_k(ds, index, xyz, hi) is not None:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # invariant: lo leaves a cell unreachable, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _unreachable_by_k(ds, index, xyz, mid) is not None else (lo, mid)
    mass = float(ds["distr"].values[(t + 1) % index.n_weeks, cells].sum())
    raise ConfigError(f"model.neighbours_k={k}: transition week {w0} -> {w1}: {len(cells)} "
                      f"week-{w1} cell(s) holding {100 * mass:.3g}% of its S&T mass are not among "
                      f"the {k} nearest of any week-{w0} cell; the smallest k that reaches every "
                      f"cell in every week is {hi}: set model.neighbours_k>={hi}")


def build_neighbours(ds: xr.Dataset, index: WeekIndex, radius_km: float | None = None,
                     k: int | None = None) -> np.ndarray:
    """The ``nbr`` table (n_transitions, n_max, K) int32 for a radius in km or k nearest.

    Args:
        ds: BirdFlowData (``cell_lon``/``cell_lat`` degrees, ``distr``, ``res_km`` attribute).
        index: its dense slot layout (:meth:`WeekIndex.from_bfdata`).
        radius_km: keep week-(t+1) cells within this great-circle distance (km), or
        k: keep each cell's k nearest week-(t+1) cells (exactly one of the two).

    Returns:
        ``nbr[t, i, :]`` = the week-(t+1) slots reachable from week-t slot i, ascending, then
        -1; K is the largest row; padding rows are all -1.

    Raises:
        ConfigError: both or neither given, a radius below one cell, k < 1, or a radius/k that
            cuts off a cell with S&T mass (see the module docstring).
        DataError: cells without a finite longitude/latitude.
    """
    if (radius_km is None) == (k is None):
        raise ConfigError("model.neighbourhood_km / model.neighbours_k: set exactly one of them "
                          "for sparse transitions (both null = dense)")
    res_km = float(ds.attrs.get("res_km", 0.0))
    lon, lat = ds["cell_lon"].values, ds["cell_lat"].values
    bad = ~(np.isfinite(lon) & np.isfinite(lat))
    if bad.any():
        raise DataError(f"cell_lon/cell_lat: {int(bad.sum())} of {bad.size} cells have no finite "
                        f"longitude/latitude (first: cell {int(np.flatnonzero(bad)[0])}), so their "
                        "distances are unknown; check the grid's CRS (cells outside its valid "
                        "domain) or use dense transitions (model.neighbourhood_km=null)")
    xyz = reach.unit_vectors(lon, lat)
    if radius_km is not None:
        radius_km = float(radius_km)
        if not radius_km >= res_km or not radius_km > 0:
            raise ConfigError(f"model.neighbourhood_km={radius_km:g}: smaller than one cell "
                              f"(res_km = {res_km:g} km); use at least {res_km:g} km, or null for "
                              "dense transitions")
        _check_radius(ds, index, xyz, radius_km)
    else:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ConfigError(f"model.neighbours_k={k!r}: must be a positive integer (or null)")
        k = int(k)
        _check_k(ds, index, xyz, k)
    if radius_km is None:
        width = min(k, int(max(len(b) for *_, b in _weeks(ds, index))))
    else:  # the longest row first, so each week's rows go straight into the table
        width = max(reach.longest_row(xyz[a], xyz[b], radius_km) for *_, a, b in _weeks(ds, index))
    nbr = np.full((index.n_transitions, index.n_max, width), -1, dtype=np.int32)
    for t, _, _, a, b in _weeks(ds, index):
        if radius_km is None:
            table = reach.nearest(xyz[a], xyz[b], k)
            nbr[t, : table.shape[0], : table.shape[1]] = table
            continue
        for start in range(0, len(a), ROW_CHUNK):  # bounded lists of Python ints per chunk
            rows = reach.within_radius(xyz[a[start:start + ROW_CHUNK]], xyz[b], radius_km)
            for i, r in enumerate(rows, start):
                nbr[t, i, : len(r)] = r
    return nbr


def sparse_index(ds: xr.Dataset, radius_km: float | None = None, k: int | None = None) -> WeekIndex:
    """The WeekIndex of ``ds`` with its neighbourhood table (see :func:`build_neighbours`)."""
    dense = WeekIndex.from_bfdata(ds)
    nbr = build_neighbours(ds, dense, radius_km, k)
    return WeekIndex(slot_cell=dense.slot_cell, cyclic=dense.cyclic, nbr=nbr)


def summary(index: WeekIndex) -> str:
    """One line: neighbours per row (mean, max), K, n_max and parameters against dense."""
    dense = WeekIndex(slot_cell=index.slot_cell, cyclic=index.cyclic)
    if index.nbr is None:
        return f"dense transitions: {dense.n_parameters()} parameters"
    per_row = (index.nbr >= 0).sum(axis=2)[index.valid[: index.n_transitions]]
    return (f"sparse transitions: neighbours per row mean {per_row.mean():.1f} max "
            f"{per_row.max()} (K = {index.n_neighbours}, n_max = {index.n_max}); "
            f"{index.n_parameters()} parameters vs {dense.n_parameters()} dense "
            f"({100.0 * index.n_parameters() / dense.n_parameters():.1f}%)")
