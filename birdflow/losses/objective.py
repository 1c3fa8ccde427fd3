"""The BirdFlow training objective and its configuration.

``objective = obs_weight * location + dist_weight * distance - ent_weight * entropy``
with the location loss L2 (BirdFlowPy) or entropic W2 (see :mod:`birdflow.losses.location`).
The L2 location loss is multiplied by the species' effective number of cells per week
(:func:`effective_cells`; ``loss.l2_norm: plain`` leaves it out, BirdFlowPy's objective).
Configs are frozen dataclasses (static, hashable: they never reach traced code as values);
:class:`Problem` holds the per-dataset arrays (a pytree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from birdflow.data.bfdata import distances_km
from birdflow.losses import blur, distance, entropy, grid_kernel, location, online_cost
from birdflow.losses.config import (  # noqa: F401  (re-exported: the objective's public names)
    L2_NORMS,
    LOCATIONS,
    NULLABLE,
    ON_UNCONVERGED,
    ONLINE_COST,
    LossConfig,
    W2Config,
)
from birdflow.model.markov import WeekIndex, marginals


class Problem(NamedTuple):
    """Per-dataset arrays the objective needs (a pytree; build with :func:`make_problem`).

    Attributes:
        targets: (T+1, n_max) S&T distribution per marginal-week in slot layout (the last is
            week 1 again for cyclic models); padding 0.
        dist_cost: (T, n_max, n_max) ``(d_km / 100)^dist_pow`` from week-t to week-(t+1) slots;
            (T, n_max, K) at ``index.nbr``'s pairs for a sparse model.
        w2_cell_cost: (n_cells, n_cells) normalised W2 ground cost between active cells
            ((0, 0) when the location loss is L2).
        w2_unit: () normalised cost of a one-cell move; W2 is reported divided by it.
        nbr: sparse models: ``index.nbr`` as an int32 device array, passed into the jitted
            step as data (a large table compiled in as a constant costs compile time and
            memory); None for dense models.
        w2_points: online W2 cost (``loss.w2.online_cost``): (n_cells, 2) cell coordinates
            (:func:`birdflow.losses.online_cost.cell_points`; ``w2_cell_cost`` is then (0, 0));
            None otherwise.
        w2_top: () the online cost's normaliser (1 for sqeuclidean).
        w2_grid: grid kernel (``loss.w2.grid_kernel``): the per-week boxes
            (:class:`birdflow.losses.grid_kernel.GridCost`; ``w2_cell_cost`` is then (0, 0));
            None otherwise.
        l2_scale: () the factor on the L2 location loss: :func:`effective_cells` of the
            targets with ``loss.l2_norm: cells`` and an L2 location loss, else 1.
    """

    targets: jax.Array
    dist_cost: jax.Array
    w2_cell_cost: jax.Array
    w2_unit: jax.Array = 1.0
    nbr: jax.Array | None = None
    w2_points: jax.Array | None = None
    w2_top: jax.Array = 1.0
    w2_grid: grid_kernel.GridCost | None = None
    l2_scale: jax.Array = 1.0


def effective_cells(distr: np.ndarray) -> float:
    """The mean over weeks of ``1 / sum_i s_t(i)^2``: a week's effective number of cells.

    ``distr`` (n_weeks, n_cells), each row a distribution. A week spread evenly over n cells
    counts n; cells with little mass count little (S&T's faint edges barely change it). For a
    range of fixed area it grows as 1 / res_km^2, as the cell count does, while the L2 of two
    maps that differ by a fixed relative amount shrinks as 1 / (cell count): their product
    stays the same at every resolution (the continental scene: 88.9 at 120 km, 317 at 60 km,
    1,248 at 30 km; the synthetic species 51.0 at 100 km).
    """
    s = np.asarray(distr, dtype=np.float64)
    return float(np.mean(1.0 / np.sum(s * s, axis=-1)))


def l2_scale(ds: xr.Dataset, cfg: LossConfig) -> float:
    """The factor ``objective`` puts on the L2 location loss (see :class:`Problem`)."""
    if cfg.location != "l2" or cfg.l2_norm == "plain":
        return 1.0
    return effective_cells(ds["distr"].values)


def make_problem(ds: xr.Dataset, index: WeekIndex, cfg: LossConfig) -> Problem:
    """Slot-layout targets and costs of a BirdFlowData (float32 unless x64 is enabled)."""
    targets = index.slot_values(ds["distr"].values)
    dtype = jnp.result_type(float)
    if index.sparse:  # only the kept pairs, from coordinates (never ds["distance_km"])
        dist_cost = distance.sparse_transition_cost(ds["cell_lon"].values, ds["cell_lat"].values,
                                                    index, cfg.dist_pow, np.dtype(dtype))
    else:
        dist_cost = distance.transition_cost(distances_km(ds), index, cfg.dist_pow)
    w2_cost, unit, points, top, boxes = w2_cost_parts(ds, index, cfg.w2, dtype) if (
        cfg.location == "w2") else (np.zeros((0, 0)), 1.0, None, 1.0, None)
    nbr = None if index.nbr is None else jnp.asarray(index.nbr, jnp.int32)
    arrays = (jnp.asarray(a, dtype=dtype) for a in (targets, dist_cost, w2_cost, unit))
    return Problem(*arrays, nbr=nbr, w2_points=points, w2_top=jnp.asarray(top, dtype),
                   w2_grid=boxes, l2_scale=jnp.asarray(l2_scale(ds, cfg), dtype))


def w2_cost_parts(ds: xr.Dataset, index: WeekIndex, c: W2Config, dtype=jnp.float32):
    """The W2 cost of a BirdFlowData as :class:`Problem` holds it, by ``loss.w2`` settings.

    Returns ``(w2_cell_cost, w2_unit, w2_points, w2_top, w2_grid)``: one of the grid kernel's
    boxes, the online cost's points or the (n_cells, n_cells) matrix is set (the others empty).
    """
    w2_cost, unit, points, top, boxes = np.zeros((0, 0)), 1.0, None, 1.0, None
    coords = (ds["cell_x"].values, ds["cell_y"].values, ds["cell_lon"].values, ds["cell_lat"].values)
    res_km = float(ds.attrs.get("res_km", 100.0))
    grid = None
    if c.grid_kernel is not False and c.cost == "sqeuclidean" and c.grad_mode == "danskin":
        grid = grid_kernel.layout(ds["cell_row"].values, ds["cell_col"].values, coords[0],
                                  coords[1], index.slot_cell[index.week_of_marginal()],
                                  grid_kernel.diameter_km(coords[0], coords[1]), np.dtype(dtype))
    shape = None if grid is None else (grid.rows.shape[0], grid.cols.shape[0])
    if grid_kernel.use_grid(c.grid_kernel, c.cost, c.grad_mode, index.n_max, shape):
        boxes = jax.tree.map(jnp.asarray, grid)
        unit = location.one_cell_cost(*coords, res_km, c.cost, c.cost_pow)
    elif online_cost.use_online(c.online_cost, len(coords[0])) and c.grad_mode == "danskin":
        points, top, unit = online_cost.cell_points(*coords, c.cost, c.cost_pow, res_km)
        points = jnp.asarray(points, dtype)
    else:
        w2_cost = location.cell_cost(*coords, c.cost, c.cost_pow)
        unit = location.one_cell_cost(*coords, res_km, c.cost, c.cost_pow)
    return w2_cost, unit, points, top, boxes


def init_loss_state(problem: Problem, index: WeekIndex, cfg: LossConfig) -> Any:
    """W2 loss state; ``{}`` for L2.

    ``f``, ``g``: warm-start Sinkhorn potentials (zeros = cold start), (n_solves * W, n_max)
    (the box size instead of n_max with the grid kernel);
    ``ref``: the cached W(s, s) per week (W,), ``ref_eps`` the epsilon it was solved at
    (-1: not yet solved) and ``ref_converged`` (W,) whether each of those solves converged.
    """
    if cfg.location != "w2":
        return {}
    w = problem.targets.shape[0]
    dtype = problem.targets.dtype
    size = index.n_max if problem.w2_grid is None else problem.w2_grid.size
    zeros = jnp.zeros((location.n_solves(cfg.w2.debiased) * w, size), dtype)
    return {"f": zeros, "g": zeros, "ref": jnp.zeros((w,), dtype), "ref_eps": jnp.asarray(-1.0, dtype),
            "ref_converged": jnp.zeros((w,), bool)}


def epsilon_at(cfg: W2Config, step, unit=1.0) -> jax.Array:
    """Epsilon at training ``step`` in normalised cost units (:func:`blur.epsilon_at`)."""
    return blur.epsilon_at(cfg, unit, step)


def objective(params: dict, problem: Problem, index: WeekIndex, cfg: LossConfig, state: Any,
              step, weights: Mapping | None = None) -> tuple[jax.Array, tuple[dict, Any]]:
    """Total loss and its terms; differentiable in ``params`` (``jax.value_and_grad(has_aux=True)``).

    ``weights`` (optional; used by :mod:`birdflow.tuning`) replaces any of the config's
    ``obs_weight``, ``dist_weight``, ``ent_weight``, ``dist_pow`` and ``w2_scale`` with traced
    scalars, so the objective is also differentiable in them; ``dist_pow`` is then applied to
    the precomputed cost as ``c^(p / cfg.dist_pow)`` (zero distances stay zero).

    Returns:
        ``(total, (terms, new_state))``; terms: "total", "obs" (location loss in use: BirdFlowPy's
        plain L2, whose weight in ``total`` is ``obs_weight * problem.l2_scale``; W2 after
        ``scale``), "dist", "ent" (BirdFlowPy's bracket, subtracted), "l2", and for W2 "w2"
        (unscaled sum over weeks, in one-cell-move units), "sinkhorn_iterations" (slowest week),
        "epsilon" (normalised cost units), "n_unconverged" (week-solves, all terms, that stopped
        at max_iterations above their tolerance: ``threshold``, ``error_tolerance`` for
        amortised ones), "n_extended" (amortised week-solves that ran past
        ``iterations_per_step`` to reach ``error_tolerance``), "n_fallback" (implicit mode:
        week-solves whose gradient fell back to the envelope gradient) and "sinkhorn_error"
        (largest L1 marginal error of the W(mu, s) and W(mu, mu) potentials this step).
    """
    w = {"obs_weight": cfg.obs_weight, "dist_weight": cfg.dist_weight, "ent_weight": cfg.ent_weight,
         "w2_scale": cfg.w2.scale, **(weights or {})}
    dist_cost = problem.dist_cost
    if weights is not None and "dist_pow" in weights:
        dist_cost = distance.repowered_cost(dist_cost, cfg.dist_pow, weights["dist_pow"])
    mu, M = marginals(params, index, problem.nbr)
    l2 = location.l2(mu, problem.targets).sum()
    dist = distance.distance_per_transition(M, dist_cost).sum()
    ent = entropy.entropy_term(mu, M)
    terms = {"l2": l2, "dist": dist, "ent": ent}
    new_state = state
    if cfg.location == "w2":
        c = cfg.w2
        eps = epsilon_at(c, step, problem.w2_unit)
        vals, iters, counts, new_state = _w2_term(mu, problem, index, c, state, eps, step)
        terms.update(w2=vals.sum() / problem.w2_unit, sinkhorn_iterations=iters.max(), epsilon=eps,
                     **counts)
        obs = w["w2_scale"] * terms["w2"]
        obs_weight = w["obs_weight"]
    else:
        obs = l2
        obs_weight = w["obs_weight"] * problem.l2_scale
    total = obs_weight * obs + w["dist_weight"] * dist - w["ent_weight"] * ent
    terms.update(obs=obs, total=total)
    return total, (terms, new_state)


def _w2_term(mu, problem: Problem, index: WeekIndex, c: W2Config, state: dict, eps, step):
    """Weekly W2 values, Sinkhorn iterations and the new loss state (see W2Config)."""
    slot_cell = index.slot_cell[index.week_of_marginal()]
    if problem.w2_grid is not None:  # grid kernel: per-week boxes, no (n, n) matrix
        cost = problem.w2_grid
    elif problem.w2_points is not None:  # online cost: coordinates, no (n, n) matrix
        cost = online_cost.OnlineCost(problem.w2_points, jnp.asarray(slot_cell), problem.w2_top,
                                      c.cost, c.cost_pow)
    elif c.shared_cost and c.grad_mode != "unroll":  # unrolling cannot carry the int slot table
        cost = location.SlotCost(problem.w2_cell_cost, jnp.asarray(slot_cell))
    else:
        cost = location.slot_cost(problem.w2_cell_cost, slot_cell)
    init = (state["f"], state["g"])
    if not c.warm_start:
        init = tuple(jnp.zeros_like(p) for p in init)
    solve_kw = {"threshold": c.threshold, "max_iterations": c.max_iterations,
                "symmetric": c.symmetric, "inner_iterations": c.inner_iterations,
                "week_batch": c.week_batch}
    w = mu.shape[0]
    ref, ref_val, ref_eps = None, state.get("ref"), state.get("ref_eps")
    if c.debiased and c.cache_target_self:
        ref_init = (init[0][2 * w:], init[1][2 * w:])

        def fresh():
            return location.self_cost(problem.targets, cost, eps, ref_init, **solve_kw)

        def cached():  # the flags W(s, s) had when it was solved; its error is not kept
            return (state["ref"].astype(mu.dtype), *ref_init, jnp.zeros((w,), jnp.int32),
                    state["ref_converged"], jnp.zeros((w,), bool), jnp.full((w,), -1.0, mu.dtype))

        ref = jax.lax.cond(state["ref_eps"] == eps, cached, fresh)
        ref_val, ref_eps = ref[0], jnp.asarray(eps, state["ref_eps"].dtype)

    def solve(fixed):
        return location.w2(mu, problem.targets, cost, eps, init, grad_mode=c.grad_mode,
                           debiased=c.debiased, target_self=ref, momentum=c.momentum,
                           fixed_iterations=fixed, tolerance=c.error_tolerance,
                           linear_solve=c.linear_solve, **solve_kw)

    n_mu = 2 * w if c.debiased else w  # the solves that depend on mu
    extended = jnp.zeros((), jnp.int32)
    if c.iterations_per_step is None:
        res = solve(None)
    else:  # amortised: step 0 and every full_solve_every-th step solve to the threshold
        full = step == 0
        if c.full_solve_every > 0:
            full = full | (step % c.full_solve_every == 0)
        res = jax.lax.cond(full, lambda: solve(None), lambda: solve(c.iterations_per_step))
        extended = jnp.where(full, 0, jnp.sum(res.iterations[:n_mu] > c.iterations_per_step))
    f, g = res.potentials
    new_state = {"f": f, "g": g}
    if ref_val is not None:
        new_state.update(ref=ref_val, ref_eps=ref_eps,
                         ref_converged=state["ref_converged"] if ref is None else ref[4])
    counts = {"n_unconverged": jnp.sum(~res.converged), "n_extended": extended,
              "n_fallback": jnp.sum(res.fallback),
              "sinkhorn_error": jnp.max(res.errors[:n_mu])}
    return res.values, res.iterations, counts, new_state
