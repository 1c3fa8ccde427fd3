"""W2 ground costs between cells, and their per-week slot views (OTT geometries).

Costs are normalised to [0, 1] (see :func:`cell_cost`); ``loss.w2.epsilon_cells`` is epsilon in
units of :func:`one_cell_cost` (:mod:`birdflow.losses.blur`). A week's slot cost puts padding slots at a common far-away point:
cost 0 among themselves, ``PAD_COST`` to any real cell (see :mod:`birdflow.losses.location`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from ott.geometry import geometry
from scipy.spatial import ConvexHull, QhullError

from birdflow.data.grid import EARTH_RADIUS_KM, great_circle_km

WeeklyCost = Float[Array, "week slot slot_to"]  # a ground cost per marginal-week
PAD_COST = 100.0  # padding <-> real-cell cost; 100 x the largest real cost
MASS_FLOOR = 1e-10  # added to every slot (or box cell) of both marginals before a solve
COSTS = ("sqeuclidean", "dist_pow")


def max_sq_distance_km2(x_m: np.ndarray, y_m: np.ndarray) -> float:
    """Largest squared distance (km^2) between two projected cell centres: the squared diameter.

    Taken over the convex hull's vertices (the farthest pair lies on the hull), so no
    (n, n) array is formed; collinear centres fall back to all points, in row chunks.
    """
    xy = np.unique(np.stack([np.asarray(x_m, float), np.asarray(y_m, float)], axis=1) / 1e3, axis=0)
    if len(xy) > 3:
        try:
            xy = xy[ConvexHull(xy).vertices]
        except QhullError:  # collinear centres: every point is kept
            pass
    return float(max((((xy[i:i + 1024, None] - xy[None]) ** 2).sum(-1).max()
                      for i in range(0, len(xy), 1024)), default=0.0))


def cell_cost(x_m: np.ndarray, y_m: np.ndarray, lon: np.ndarray, lat: np.ndarray,
              cost: str = "sqeuclidean", cost_pow: float = 0.4) -> np.ndarray:
    """(n_cells, n_cells) W2 ground cost between active cells, normalised to max 1.

    Args:
        x_m, y_m: (n_cells,) projected cell centres, metres.
        lon, lat: (n_cells,) the same centres in degrees (used by ``dist_pow``).
        cost: ``"sqeuclidean"``: ``|x_i - x_j|^2 / D^2`` with D the largest distance between
            two active cells (the grid diameter); ``"dist_pow"``: ``(d_km / 100)^cost_pow``
            divided by its maximum (great-circle d, the research code's cost up to scale).
    """
    if cost == "sqeuclidean":
        xy = np.stack([np.asarray(x_m, float), np.asarray(y_m, float)], axis=1) / 1e3
        c = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    elif cost == "dist_pow":
        d = great_circle_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
        c = np.minimum(d, np.pi * EARTH_RADIUS_KM) / 100.0
        c = c ** float(cost_pow)
    else:
        raise ValueError(f"unknown W2 cost {cost!r}; use one of {COSTS}")
    top = c.max()
    return c / top if top > 0 else c


def one_cell_cost(x_m: np.ndarray, y_m: np.ndarray, lon: np.ndarray, lat: np.ndarray,
                  res_km: float, cost: str = "sqeuclidean", cost_pow: float = 0.4) -> float:
    """Normalised cost (as :func:`cell_cost` returns it) of moving one cell, ``res_km``.

    The W2 loss is divided by it, so it reads in "cell moves": moving all the mass of a week
    by one cell costs 1 with the squared-Euclidean cost, whatever the grid's size or extent.
    """
    if cost == "sqeuclidean":
        top = max_sq_distance_km2(x_m, y_m)
        return float(res_km) ** 2 / top if top > 0 else 1.0
    d = great_circle_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
    top = float((np.minimum(d, np.pi * EARTH_RADIUS_KM) / 100.0).max() ** float(cost_pow))
    return (float(res_km) / 100.0) ** float(cost_pow) / top if top > 0 else 1.0


def pad_slots(c: jax.Array, valid_from: jax.Array, valid_to: jax.Array) -> jax.Array:
    """The padding rule on a slot cost: real-real pairs keep ``c``, padding-padding pairs cost 0,
    padding-real pairs ``PAD_COST``; ``valid_from``/``valid_to`` broadcast against ``c``."""
    both, neither = valid_from & valid_to, ~valid_from & ~valid_to
    return jnp.where(both, c, jnp.where(neither, 0.0, PAD_COST).astype(c.dtype))


def slot_cost(cell_cost_matrix: jax.Array, slot_cell: np.ndarray) -> WeeklyCost:
    """Gather per-week (n_max, n_max) costs from a cell cost; padding blocks as documented.

    ``slot_cell`` is the (n_marginals, n_max) static slot -> cell table (-1 = padding).
    """
    valid = slot_cell >= 0
    idx = np.maximum(slot_cell, 0)
    c = cell_cost_matrix[idx[:, :, None], idx[:, None, :]]
    return pad_slots(c, valid[:, :, None], valid[:, None, :])


@jax.tree_util.register_pytree_node_class
class SlotGeometry(geometry.Geometry):
    """One week's (n_max, n_max) slot cost, gathered from the shared cell cost on use.

    Same costs as :func:`slot_cost` gives for that week, but nothing of size
    (W, n_max, n_max) is stored: every Sinkhorn iteration reads the one shared
    (n_cells, n_cells) matrix (memory: one cost matrix instead of one per week).
    """

    def __init__(self, cell_cost: jax.Array, slot_cell: jax.Array, epsilon=None):
        super().__init__(epsilon=epsilon)
        self.cell_cost, self.slot_cell = cell_cost, slot_cell

    @property
    def cost_matrix(self) -> jax.Array:
        valid = self.slot_cell >= 0
        idx = jnp.maximum(self.slot_cell, 0)
        return pad_slots(self.cell_cost[idx[:, None], idx[None, :]], valid[:, None], valid[None, :])

    @property
    def shape(self) -> tuple[int, int]:
        return self.slot_cell.shape[0], self.slot_cell.shape[0]

    @property
    def dtype(self):
        return self.cell_cost.dtype

    def tree_flatten(self):
        return (self.cell_cost, self.slot_cell, self._epsilon_init), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        return cls(*children)


class SlotCost(NamedTuple):
    """The W2 cost as one shared cell cost plus the slot table (see :class:`SlotGeometry`).

    Attributes:
        cell_cost: (n_cells, n_cells) normalised cost from :func:`cell_cost`.
        slot_cell: (W, n_max) int32 cell of each slot per marginal-week (-1 = padding).
    """

    cell_cost: jax.Array
    slot_cell: jax.Array
