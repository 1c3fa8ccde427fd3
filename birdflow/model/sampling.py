"""Start cells and route sampling on a fitted chain, in the slot layout of its joints.

A step forward from cell i of week t draws the next cell j with probability
``M_t[i, j] / sum_j M_t[i, j]``; a step backward from cell j of week t + 1 draws i with
``M_t[i, j] / sum_i M_t[i, j]`` (BirdFlowR's forward and backward transitions, reference
§4.1). Routes therefore only visit cells of their weeks' dynamic masks.

The route table follows BirdFlowR's ``BirdFlowRoutes`` (reference §3.3), one row per
(route, week) in time order: ``route_id`` (1..n), ``i`` (1-based active-cell index), ``x``,
``y`` (metres, model CRS), ``lon``, ``lat`` (degrees), ``date`` (week centre), ``timestep``
(1-based position in the model's weeks), ``route_type`` ("synthetic"), ``stay_id`` (1-based,
increments whenever ``i`` changes along a route), ``stay_len`` (weeks between the first and
last point of the stay: 0 for a one-week stay), plus ``week`` (S&T week number).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdflow.errors import DataError
from birdflow.model import joints
from birdflow.model.timeline import Timeline

ROUTE_COLUMNS = ["route_id", "i", "x", "y", "lon", "lat", "date", "timestep", "route_type",
                 "stay_id", "stay_len", "week"]


def slot_of(slot_cell_week: np.ndarray, n_cells: int) -> np.ndarray:
    """Cell -> slot of one week (-1 when the cell is not in that week's dynamic mask)."""
    out = np.full(n_cells, -1)
    ok = slot_cell_week >= 0
    out[slot_cell_week[ok]] = np.flatnonzero(ok)
    return out


def _step_weights(model, t: int, slots: np.ndarray, forward: bool):
    """Weights of the next slots of routes now in ``slots``: (n, width) and the slot of each.

    Dense models: the joint's rows (forward) or columns (backward), all n_max slots. Sparse
    models: the kept entries of those rows of ``M_t`` (or of ``M_t^T``), read from CSR with
    slots in increasing order and padded with weight 0, so the cumulative sums are those of
    the dense rows at every kept entry; no week is densified.
    """
    if not model.sparse:
        M = model.marginals[t]
        w = M[slots] if forward else M[:, slots].T
        return w, np.broadcast_to(np.arange(M.shape[1]), w.shape)
    A = joints.joint_csr(model.index, model.marginals, t, transpose=not forward)
    s = np.maximum(slots, 0)
    start, length = A.indptr[s], np.where(slots >= 0, np.diff(A.indptr)[s], 0)
    width = max(int(length.max(initial=0)), 1)
    k = np.arange(width)
    inside = k[None, :] < length[:, None]
    at = np.where(inside, start[:, None] + k[None, :], 0)
    if not A.nnz:
        return np.zeros(inside.shape), np.zeros(inside.shape, dtype=np.int64)
    return np.where(inside, A.data[at], 0.0), np.where(inside, A.indices[at], 0)


def sample_cells(model, start_cells: np.ndarray, tl: Timeline,
                 rng: np.random.Generator | int = 0) -> np.ndarray:
    """Sample every route's cell at each step of ``tl``.

    Args:
        model: a :class:`birdflow.model.fitted.BirdFlowModel`.
        start_cells: (n,) active-cell index of each route at ``tl.positions[0]``.
        tl: the timeline (positions, transitions, direction).
        rng: numpy generator (or seed) drawing one uniform per route and step.

    Returns:
        (n, n_steps + 1) active-cell indices in the order of travel.

    Raises:
        DataError: a route reaches a cell with no probability onward (a dead end, e.g. after
            sparsifying without fixing dead ends).
    """
    rng = np.random.default_rng(rng)
    slot_cell = model.index.slot_cell
    cells = np.asarray(start_cells, dtype=np.int64)
    path = [cells]
    for k, t in enumerate(tl.transitions):
        here, there = tl.positions[k], tl.positions[k + 1]
        slots = slot_of(slot_cell[here], model.n_cells)[cells]
        weights, to_slot = _step_weights(model, t, slots, tl.sign > 0)  # over `there`'s slots
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1]
        dead = (slots < 0) | (total <= 0)
        if dead.any():
            c = int(cells[np.flatnonzero(dead)[0]])
            raise DataError(f"cell {c + 1} (1-based) of S&T week {int(tl.weeks[k])} has no "
                            f"probability {tl.direction} (a dead end of the model); sparsify with "
                            "fix=True or start elsewhere")
        u = rng.random(len(cells)) * total
        picked = np.argmax(cdf > u[:, None], axis=1)  # first slot whose CDF exceeds u
        cells = slot_cell[there][to_slot[np.arange(len(cells)), picked]]
        path.append(cells)
    return np.stack(path, axis=1)


def routes_table(model, cells: np.ndarray, tl: Timeline) -> pd.DataFrame:
    """(n, n_steps + 1) sampled cells -> BirdFlowRoutes-style long table in time order."""
    ds = model.data
    order = np.arange(cells.shape[1]) if tl.sign > 0 else np.arange(cells.shape[1])[::-1]
    cells = cells[:, order]
    n, n_pos = cells.shape
    dates = tl.dates[order]
    flat = cells.ravel()
    changed = np.ones_like(cells, dtype=bool)
    changed[:, 1:] = cells[:, 1:] != cells[:, :-1]
    stay_id = np.cumsum(changed, axis=1)
    # stay length: weeks between the first and last point of each stay
    days = np.asarray((dates - dates[0]).days, dtype=float)
    stay_len = np.zeros_like(cells, dtype=np.int64)
    for r in range(n):
        ids = stay_id[r]
        first = np.full(ids.max() + 1, np.inf)
        last = np.full(ids.max() + 1, -np.inf)
        np.minimum.at(first, ids, days)
        np.maximum.at(last, ids, days)
        stay_len[r] = np.rint((last - first)[ids] / 7.0).astype(np.int64)
    return pd.DataFrame({
        "route_id": np.repeat(np.arange(1, n + 1), n_pos),
        "i": flat + 1,
        "x": ds["cell_x"].values[flat],
        "y": ds["cell_y"].values[flat],
        "lon": ds["cell_lon"].values[flat],
        "lat": ds["cell_lat"].values[flat],
        "date": np.tile(dates.values, n),
        "timestep": np.tile(tl.positions[order] + 1, n),
        "route_type": "synthetic",
        "stay_id": stay_id.ravel(),
        "stay_len": stay_len.ravel(),
        "week": np.tile(tl.weeks[order], n),
    }, columns=ROUTE_COLUMNS)
