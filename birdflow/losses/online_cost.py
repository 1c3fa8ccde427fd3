"""The W2 ground cost computed from cell coordinates inside Sinkhorn (``loss.w2.online_cost``).

:func:`birdflow.losses.location.cell_cost` stores an (n_cells, n_cells) matrix; at tens of
thousands of cells that is gigabytes. Here each week's geometry holds only its slots'
coordinates (n_max, 2) and computes the cost a block of :data:`BLOCK_ROWS` rows at a time
inside every log-sum-exp (the Sinkhorn update, the marginals), so the memory of a W2 solve is
O(n_max * BLOCK_ROWS) instead of O(n_max^2). The costs are those of ``cell_cost``:

* ``sqeuclidean``: ``|x_i - x_j|^2`` with the points given in grid diameters (projected km
  divided by the largest distance between two active cells), so the largest cost is 1;
* ``dist_pow``: ``(min(d_km, pi R) / 100)^cost_pow / top`` with ``d_km`` the haversine
  distance on (lon, lat) in radians and ``top`` its maximum over active cells.

Padding slots keep location.py's treatment (cost 0 among themselves, ``PAD_COST`` to any real
cell). OTT's own ``PointCloud(batch_size=...)`` is broken on jax >= 0.9 in ott-jax 0.6.0
(``docs/solver_notes.md``), hence this geometry. Only the danskin gradient is supported: the
implicit mode's linear system needs the plan as a matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry

from birdflow.data.grid import EARTH_RADIUS_KM, great_circle_km
from birdflow.losses.ground_cost import max_sq_distance_km2, pad_slots

AUTO_CELLS = 3000  # online_cost: auto turns the online cost on above this many active cells
BLOCK_ROWS = 256  # cost rows computed at once (memory O(BLOCK_ROWS * n_max) per week)


def use_online(setting, n_cells: int) -> bool:
    """``loss.w2.online_cost`` (``"auto"``, True, False) resolved for ``n_cells`` active cells."""
    return n_cells > AUTO_CELLS if setting == "auto" else bool(setting)


def cell_points(x_m: np.ndarray, y_m: np.ndarray, lon: np.ndarray, lat: np.ndarray,
                cost: str = "sqeuclidean", cost_pow: float = 0.4, res_km: float = 100.0,
                chunk: int = 2048) -> tuple[np.ndarray, float, float]:
    """Points and normaliser that make :func:`pair_cost` equal ``location.cell_cost``.

    The ``sqeuclidean`` diameter comes from the convex hull (:func:`ground_cost.max_sq_distance_km2`);
    the ``dist_pow`` maximum over all pairs is found in row chunks of ``chunk`` (O(chunk * n)
    memory).

    Returns:
        (points (n_cells, 2), top, unit): ``sqeuclidean``: projected km divided by the grid
        diameter, top 1; ``dist_pow``: (lon, lat) in radians, top the largest
        ``(d_km / 100)^cost_pow``. ``unit`` is the normalised cost of a ``res_km`` move
        (``location.one_cell_cost``).
    """
    if cost == "sqeuclidean":
        xy = np.stack([np.asarray(x_m, float), np.asarray(y_m, float)], axis=1) / 1e3
        d2 = max_sq_distance_km2(x_m, y_m)
        if d2 <= 0:
            return xy, 1.0, 1.0
        return xy / np.sqrt(d2), 1.0, float(res_km) ** 2 / d2
    if cost == "dist_pow":
        lon, lat = np.asarray(lon, float), np.asarray(lat, float)
        dmax = max((great_circle_km(lon[i:i + chunk, None], lat[i:i + chunk, None],
                                    lon[None], lat[None]).max()
                    for i in range(0, len(lon), chunk)), default=0.0)
        top = (min(dmax, np.pi * EARTH_RADIUS_KM) / 100.0) ** float(cost_pow)
        if top <= 0:
            return np.radians(np.stack([lon, lat], axis=1)), 1.0, 1.0
        unit = (float(res_km) / 100.0) ** float(cost_pow) / top
        return np.radians(np.stack([lon, lat], axis=1)), float(top), unit
    raise ValueError(f"unknown W2 cost {cost!r}; use sqeuclidean or dist_pow")


def pair_cost(p: jax.Array, q: jax.Array, top, kind: str, cost_pow: float) -> jax.Array:
    """(len(p), len(q)) normalised cost between two sets of points from :func:`cell_points`."""
    if kind == "sqeuclidean":
        return jnp.sum((p[:, None, :] - q[None, :, :]) ** 2, axis=-1) / top
    lon1, lat1, lon2, lat2 = p[:, None, 0], p[:, None, 1], q[None, :, 0], q[None, :, 1]
    h = jnp.sin((lat2 - lat1) / 2) ** 2 + jnp.cos(lat1) * jnp.cos(lat2) * jnp.sin((lon2 - lon1) / 2) ** 2
    d = 2 * EARTH_RADIUS_KM * jnp.arcsin(jnp.sqrt(jnp.clip(h, 0.0, 1.0)))
    d = jnp.minimum(d, np.pi * EARTH_RADIUS_KM) / 100.0
    return jnp.where(d > 0, d, 1.0) ** cost_pow * (d > 0) / top  # 0^pow without a NaN path


@jax.tree_util.register_pytree_node_class
class OnlineCost:
    """The W2 cost as cell coordinates plus the slot table (what ``_w2_term`` passes on).

    Attributes:
        points: (n_cells, 2) from :func:`cell_points`; slot_cell: (W, n_max) int32 cell of
        each slot per marginal-week (-1 = padding); top: () normaliser; kind, cost_pow: static.
    """

    def __init__(self, points, slot_cell, top, kind: str = "sqeuclidean", cost_pow: float = 0.4):
        self.points, self.slot_cell, self.top = points, slot_cell, top
        self.kind, self.cost_pow = kind, float(cost_pow)

    def geometry(self, slot_cell_week: jax.Array, epsilon=None) -> OnlineSlotGeometry:
        """One week's geometry (``slot_cell_week``: (n_max,) int32)."""
        return OnlineSlotGeometry(self.points[jnp.maximum(slot_cell_week, 0)], slot_cell_week >= 0,
                                  self.top, self.kind, self.cost_pow, epsilon=epsilon)

    def tree_flatten(self):
        return (self.points, self.slot_cell, self.top), (self.kind, self.cost_pow)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)


@jax.tree_util.register_pytree_node_class
class OnlineSlotGeometry(geometry.Geometry):
    """One week's slot geometry whose cost rows are computed from coordinates when used.

    Args:
        points: (n_max, 2) slot coordinates (padding slots: anything); valid: (n_max,) bool.
        top, kind, cost_pow: as :func:`pair_cost`.
    """

    def __init__(self, points, valid, top, kind: str = "sqeuclidean", cost_pow: float = 0.4,
                 epsilon=None):
        super().__init__(epsilon=epsilon)
        self.points, self.valid, self.top = points, valid, top
        self.kind, self.cost_pow = kind, float(cost_pow)

    def cost_rows(self, rows: jax.Array) -> jax.Array:
        """(len(rows), n_max) cost from the slots ``rows`` to every slot, padding included."""
        c = pair_cost(self.points[rows], self.points, self.top, self.kind, self.cost_pow)
        return pad_slots(c, self.valid[rows][:, None], self.valid[None, :]).astype(self.dtype)

    @property
    def cost_matrix(self) -> jax.Array:  # only for checks and the plan; Sinkhorn never needs it
        return self.cost_rows(jnp.arange(self.shape[0]))

    def _softmax(self, f, g, eps, vec, axis):
        if vec is not None:  # weighted kernels (not used by Sinkhorn): the dense path
            return super()._softmax(f, g, eps, vec, axis)
        # axis=1: out_i = lse_j (f_i + g_j - C_ij); axis=0: out_j = lse_i (...). C is
        # symmetric (one slot set), so both read cost rows of the output's own slots.
        own, other = (f, g) if axis == 1 else (g, f)
        n = self.shape[0]
        b = min(BLOCK_ROWS, n)
        blocks = jnp.minimum(jnp.arange(-(-n // b) * b).reshape(-1, b), n - 1)

        def block(rows):
            z = (own[rows][:, None] + other[None, :] - self.cost_rows(rows)) / eps
            return eps * jax.nn.logsumexp(z, axis=1)

        return jax.lax.map(block, blocks).reshape(-1)[:n], jnp.array([1.0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.points.shape[0], self.points.shape[0]

    @property
    def dtype(self):
        return self.points.dtype

    @property
    def is_symmetric(self) -> bool:
        return True

    def tree_flatten(self):
        return (self.points, self.valid, self.top, self._epsilon_init), (self.kind, self.cost_pow)

    @classmethod
    def tree_unflatten(cls, aux, children):
        points, valid, top, eps = children
        return cls(points, valid, top, *aux, epsilon=eps)
