"""The W2 kernel applied one grid axis at a time (``loss.w2.grid_kernel``).

Cells lie on a regular raster grid, and the default W2 cost (``sqeuclidean``) is the squared
distance between projected cell centres, a sum of a row term and a column term. The Gibbs
kernel ``exp(-C / eps)`` then factorises, and a Sinkhorn log-sum-exp over all cells becomes
two log-sum-exps over one axis each (convolutional Wasserstein; OTT's ``Grid`` geometry):
O(B (H + W)) per update for a box of B = H x W cells instead of O(n_max^2), and nothing of
size n_max^2 is stored.

Each marginal-week's slots are placed in a box of H x W grid cells whose top-left corner is
that week's northernmost row and westernmost column (H, W: the largest extent over the weeks,
so every week shares one shape). Box cells outside the week's support (ocean, cells without
S&T mass that week, the box's margin) carry the floor mass ``ground_cost.MASS_FLOOR`` like the
padding slots of the matrix cost, which keeps every potential finite; they change the W2 value
by about ``MASS_FLOOR`` per box cell (``tests/test_grid_kernel.py`` measures it). Costs are in
grid diameters as in :func:`birdflow.losses.ground_cost.cell_cost` (largest cost 1). Only the
``danskin`` gradient is supported, as for the online cost.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import grid

from birdflow.errors import ConfigError, DataError
from birdflow.losses.ground_cost import MASS_FLOOR, max_sq_distance_km2

REGULAR_TOL = 1e-3  # cell centres must sit within this fraction of a cell of a regular lattice


@jax.tree_util.register_pytree_node_class
class BoxGrid(grid.Grid):
    """OTT's 2-D ``Grid`` with a log-sum-exp that skips OTT's add-and-remove of the potential.

    ``apply_lse_kernel(f, g, eps, axis=1)`` is ``eps * lse_j((g_j - C_ij) / eps)`` (axis 0: the
    same with f), computed as one lse over rows then one over columns; OTT's version transposes
    and adds the other potential inside each axis. Weighted calls (``vec``) use OTT's.
    """

    def apply_lse_kernel(self, f, g, eps, vec=None, axis=0):
        if vec is not None:
            return super().apply_lse_kernel(f, g, eps, vec, axis)
        h, w = self.grid_size
        r, c = self.x
        c0 = (r[:, None] - r[None, :]) ** 2 / eps  # (h, h) row term
        c1 = (c[:, None] - c[None, :]) ** 2 / eps  # (w, w) column term
        v = jnp.reshape(g if axis == 1 else f, (h, w)) / eps
        t = jax.nn.logsumexp(v[None, :, :] - c0[:, :, None], axis=1)  # over source rows
        out = jax.nn.logsumexp(t[:, None, :] - c1[None, :, :], axis=2)  # over source columns
        return eps * out.ravel(), None


class GridCost(NamedTuple):
    """The W2 cost as per-week boxes of a regular grid (a pytree; see the module doc).

    Attributes:
        box: (W, n_max) int32 box cell (row-major in the H x W box) of each slot per
            marginal-week; padding slots point one past the box (dropped).
        rows: (H,) box row coordinates in grid diameters.
        cols: (W,) box column coordinates in grid diameters.
    """

    box: jax.Array
    rows: jax.Array
    cols: jax.Array

    @property
    def size(self) -> int:
        return self.rows.shape[0] * self.cols.shape[0]

    def geometry(self, epsilon) -> BoxGrid:
        return BoxGrid(x=[self.rows, self.cols], epsilon=epsilon)

    def to_box(self, p: jax.Array) -> jax.Array:
        """(W, n_max) slot distributions -> (W, H * W) box distributions, floored, summing to 1."""
        def one(p_w, box_w):
            out = jnp.full((self.size + 1,), MASS_FLOOR, p_w.dtype).at[box_w].set(p_w + MASS_FLOOR)
            out = out[:-1]
            return out / out.sum()
        return jax.vmap(one)(p, self.box)


def _spacing(coord: np.ndarray, index: np.ndarray) -> float | None:
    """Lattice spacing (m) of centres ``coord`` at integer positions ``index``; None if irregular."""
    lo, hi = int(np.argmin(index)), int(np.argmax(index))
    if index[hi] == index[lo]:
        return 0.0
    step = (coord[hi] - coord[lo]) / (index[hi] - index[lo])
    off = np.abs(coord - (coord[lo] + (index - index[lo]) * step))
    return float(abs(step)) if off.max() <= REGULAR_TOL * abs(step) else None


def layout(cell_row, cell_col, x_m, y_m, slot_cell: np.ndarray, diameter_km: float,
           dtype=np.float64) -> GridCost | None:
    """Per-week boxes for the slot table ``slot_cell`` (W, n_max) (-1 = padding).

    Returns:
        The :class:`GridCost` as numpy arrays (box int32; coordinates in units of
        ``diameter_km``, as ``dtype``), or None when the cell centres are not on a regular
        lattice of (row, column) (then the kernel does not factorise).
    """
    cell_row, cell_col = np.asarray(cell_row, np.int64), np.asarray(cell_col, np.int64)
    dx = _spacing(np.asarray(x_m, float), cell_col)
    dy = _spacing(np.asarray(y_m, float), cell_row)
    if dx is None or dy is None:
        return None
    valid = slot_cell >= 0
    idx = np.maximum(slot_cell, 0)
    r, c = cell_row[idx], cell_col[idx]
    big = np.iinfo(np.int64).max
    r0 = np.where(valid, r, big).min(axis=1, keepdims=True)
    c0 = np.where(valid, c, big).min(axis=1, keepdims=True)
    h = int((np.where(valid, r - r0, 0)).max()) + 1
    w = int((np.where(valid, c - c0, 0)).max()) + 1
    box = np.where(valid, (r - r0) * w + (c - c0), h * w)
    d = max(float(diameter_km), 1e-12) * 1e3
    return GridCost(box.astype(np.int32), (np.arange(h) * dy / d).astype(dtype),
                    (np.arange(w) * dx / d).astype(dtype))


def diameter_km(x_m: np.ndarray, y_m: np.ndarray) -> float:
    """Largest distance (km) between two cell centres (:func:`ground_cost.max_sq_distance_km2`)."""
    return float(np.sqrt(max_sq_distance_km2(x_m, y_m)))


def use_grid(setting, cost: str, grad_mode: str, n_max: int, shape: tuple[int, int] | None) -> bool:
    """``loss.w2.grid_kernel`` resolved: ``auto`` = on when it applies and costs less.

    It applies to the ``sqeuclidean`` cost with ``danskin`` gradients on a regular grid
    (``shape`` = the box (H, W), None when the grid is irregular); ``auto`` also asks that an
    update's work H W (H + W) be below the matrix cost's n_max^2. ``true`` where it does not
    apply is an error naming the reason.
    """
    if setting is False:
        return False
    reasons = []
    if cost != "sqeuclidean":
        reasons.append(f"loss.w2.cost={cost} is not a sum of row and column terms")
    if grad_mode != "danskin":
        reasons.append(f"loss.w2.grad_mode={grad_mode} (only danskin)")
    if setting is True and reasons:
        raise ConfigError(f"loss.w2.grid_kernel=true: {'; '.join(reasons)}; use cost=sqeuclidean, "
                          "grad_mode=danskin, or grid_kernel=auto")
    if reasons:
        return False
    if shape is None:
        if setting is True:
            raise DataError("loss.w2.grid_kernel=true: the cell centres are not on a regular grid "
                            "(cell_x/cell_y do not follow cell_col/cell_row); set grid_kernel=auto")
        return False
    h, w = shape
    return setting is True or h * w * (h + w) < n_max * n_max
