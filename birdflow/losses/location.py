"""Location losses: how far each modelled weekly distribution is from the S&T target.

* L2 (BirdFlowPy): ``||mu_t - s_t||^2`` per marginal-week.
* W2: entropic optimal-transport cost (OTT-JAX Sinkhorn ``reg_ot_cost``) between ``mu_t``
  and ``s_t`` over that week's slots, all weeks in one vmapped solve, optionally debiased
  (Sinkhorn divergence ``W(mu, s) - W(mu, mu)/2 - W(s, s)/2``, one batched solve per term).

W2 cost (see :func:`cell_cost`): squared Euclidean distance between projected cell centres
divided by the squared diameter of the active cells (or, as in the W2 research code,
``(d_km / 100)^pow`` divided by its maximum), so costs lie in [0, 1] and ``epsilon`` is
relative to the largest cost on the grid whatever the species or resolution.

Padding slots never enter a solve with zero weight: every slot gets a floor mass
``MASS_FLOOR`` (so no potential is -inf and no gradient NaN), padding slots sit at a common
far-away point (cost 0 among themselves, ``PAD_COST`` to any real cell), so the padding
block decouples from the real cells and adds only an O(n_max * MASS_FLOOR) constant.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

from birdflow.data.grid import EARTH_RADIUS_KM, great_circle_km
from birdflow.types import WeeklyDistr

PerWeek = Float[Array, "week"]  # one value per one-way marginal
WeeklyCost = Float[Array, "week slot slot_to"]  # a ground cost per marginal-week

MASS_FLOOR = 1e-10  # added to every slot of both marginals before a solve
PAD_COST = 100.0  # padding <-> real-cell cost; 100 x the largest real cost
GRAD_MODES = ("implicit", "danskin", "unroll")
COSTS = ("sqeuclidean", "dist_pow")


def l2(mu: WeeklyDistr, targets: WeeklyDistr) -> PerWeek:
    """Squared L2 error per marginal-week; (T+1, n_max) x2 -> (T+1,). Padding adds 0."""
    return jnp.sum((mu - targets) ** 2, axis=-1)


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
        xy = np.stack([np.asarray(x_m, float), np.asarray(y_m, float)], axis=1) / 1e3
        top = float(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1).max())
        return float(res_km) ** 2 / top if top > 0 else 1.0
    d = great_circle_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
    top = float((np.minimum(d, np.pi * EARTH_RADIUS_KM) / 100.0).max() ** float(cost_pow))
    return (float(res_km) / 100.0) ** float(cost_pow) / top if top > 0 else 1.0


def slot_cost(cell_cost_matrix: jax.Array, slot_cell: np.ndarray) -> WeeklyCost:
    """Gather per-week (n_max, n_max) costs from a cell cost; padding blocks as documented.

    ``slot_cell`` is the (n_marginals, n_max) static slot -> cell table (-1 = padding).
    """
    valid = slot_cell >= 0
    idx = np.maximum(slot_cell, 0)
    c = cell_cost_matrix[idx[:, :, None], idx[:, None, :]]
    both = valid[:, :, None] & valid[:, None, :]
    neither = ~valid[:, :, None] & ~valid[:, None, :]
    return jnp.where(both, c, jnp.where(neither, 0.0, PAD_COST).astype(c.dtype))


def _solver(threshold: float, max_iterations: int, grad_mode: str,
            linear_tol: float = 1e-6) -> sinkhorn.Sinkhorn:
    if grad_mode == "implicit":  # differentiate the optimality conditions (a linear solve)
        # lineax (Normal)CG tolerance: OTT's 1e-6 stalls in float32 and then runs to its
        # step cap (~30x slower); 1e-4 there matches the envelope gradient to ~1e-5.
        implicit = implicit_differentiation.ImplicitDiff(
            solver_kwargs={"rtol": linear_tol, "atol": linear_tol})
        return sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations,
                                 implicit_diff=implicit, use_danskin=False)
    if grad_mode == "danskin":  # envelope theorem: potentials treated as constants
        return sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations,
                                 implicit_diff=implicit_differentiation.ImplicitDiff(),
                                 use_danskin=True)
    if grad_mode == "unroll":  # backpropagate through every iteration
        return sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations,
                                 implicit_diff=None)
    raise ValueError(f"unknown grad_mode {grad_mode!r}; use one of {GRAD_MODES}")


def _floor(p: jax.Array) -> jax.Array:
    p = p + MASS_FLOOR
    return p / p.sum(axis=-1, keepdims=True)


def n_solves(debiased: bool) -> int:
    """Problems per marginal-week in the batched solve (3 when debiased)."""
    return 3 if debiased else 1


def w2(mu: WeeklyDistr, targets: WeeklyDistr,
       cost: WeeklyCost, epsilon: float | jax.Array,
       init: tuple[jax.Array, jax.Array], *, threshold: float = 1e-3,
       max_iterations: int = 2000, grad_mode: str = "implicit", debiased: bool = False):
    """Entropic OT cost per marginal-week, all weeks in one vmapped solve (3 when debiased).

    Args:
        mu, targets: (W, n_max) model and S&T distributions in slot layout (padding = 0).
        cost: (W, n_max, n_max) ground cost from :func:`slot_cost` (max real cost 1).
        epsilon: entropic regularisation in cost units (scalar, may be traced).
        init: warm-start potentials (f, g), each (n_solves * W, n_max) (zeros = cold start).
        threshold: L1 marginal error at which Sinkhorn stops; max_iterations: its cap.
        grad_mode: "implicit" | "danskin" | "unroll" (see module docs).
        debiased: return the Sinkhorn divergence instead of the regularised cost.

    Returns:
        (values (W,), (f, g) potentials for the next warm start, iterations (n_solves * W,),
        converged (n_solves * W,) bool).
    """
    a, b = _floor(mu), jax.lax.stop_gradient(_floor(targets))
    linear_tol = 1e-4 if jnp.finfo(mu.dtype).bits < 64 else 1e-6
    solver = _solver(threshold, max_iterations, grad_mode, linear_tol)
    f0, g0 = (jax.lax.stop_gradient(p) for p in init)
    w = mu.shape[0]

    def solve(a_w, b_w, cost_w, f0_w, g0_w, solver=solver):
        geom = geometry.Geometry(cost_matrix=cost_w, epsilon=epsilon)
        out = solver(linear_problem.LinearProblem(geom, a_w, b_w), init=(f0_w, g0_w))
        return out.reg_ot_cost, out.f, out.g, out.n_iters, out.converged

    if not debiased:
        vals, f, g, iters, conv = jax.vmap(solve)(a, b, cost, f0, g0)
    else:
        # Symmetric terms solved apart. W(s, s) has no gradient (a zero cotangent makes the
        # implicit linear solve NaN); W(mu, mu) uses the envelope gradient when grad_mode is
        # implicit: its float32 implicit system (a == b) fails in lineax, and at convergence
        # both gradients are the same.
        self_mode = "danskin" if grad_mode == "implicit" else grad_mode
        sym = partial(solve, solver=_solver(threshold, max_iterations, self_mode))
        main = jax.vmap(solve)(a, b, cost, f0[:w], g0[:w])
        auto = jax.vmap(sym)(a, a, cost, f0[w:2 * w], g0[w:2 * w])
        ref = jax.lax.stop_gradient(jax.vmap(sym)(b, b, jax.lax.stop_gradient(cost),
                                                  f0[2 * w:], g0[2 * w:]))
        out = [jnp.concatenate([x, y]) for x, y in zip(main, auto, strict=True)]
        vals, f, g, iters, conv = (jnp.concatenate([x, y]) for x, y in zip(out, ref, strict=True))
        vals = vals[:w] - 0.5 * vals[w:2 * w] - 0.5 * vals[2 * w:]
    return vals, (jax.lax.stop_gradient(f), jax.lax.stop_gradient(g)), iters, conv
