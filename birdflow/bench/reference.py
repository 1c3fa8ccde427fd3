"""The REFERENCE W2 of the benchmark: the W2 research code's configuration, kept for comparison.

One OTT ``linear.solve`` per week in a Python loop inside the jitted step, cold start, a dense
per-week cost ``(d_km / 100)^0.4`` over that week's active cells (unnormalised),
``epsilon = 0.01 x Geometry(cost).epsilon`` (OTT's default, 0.05 x std(cost)), threshold 5e-2,
``max_iterations`` 5000, ImplicitDiff gradients, no debiasing. Not used for training: it only
gives ``python -m birdflow.bench`` the speed the issue started from (solver_notes.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ott.geometry import geometry
from ott.solvers import linear
from ott.solvers.linear import implicit_differentiation

from birdflow.data.grid import EARTH_RADIUS_KM
from birdflow.losses import distance, entropy
from birdflow.losses.location import MASS_FLOOR
from birdflow.losses.objective import LossConfig, Problem, W2Config
from birdflow.model.markov import WeekIndex, marginals

REF_EPSILON_FACTOR = 0.01  # x OTT's default epsilon for the cost
REF_THRESHOLD = 5e-2
REF_MAX_ITERATIONS = 5000
REF_DIST_POW = 0.4


def reference_costs(distance_km: np.ndarray, index: WeekIndex) -> list[np.ndarray]:
    """Per marginal-week dense ``(d_km / 100)^0.4`` between that week's active cells, (n_t, n_t)."""
    out = []
    for w in index.week_of_marginal():
        cells = index.slot_cell[w][index.valid[w]]
        out.append((np.asarray(distance_km)[np.ix_(cells, cells)] / 100.0) ** REF_DIST_POW)
    return out


def like_for_like_config(distance_km: np.ndarray, index: WeekIndex,
                         res_km: float = 100.0) -> W2Config:
    """Our W2 solver set to the reference's problem: the same cost, epsilon and threshold.

    The cost is the reference's ``(d_km / 100)^0.4`` (ours divides it by its largest value,
    so epsilon is divided by the same number: the solve is the same up to that scale);
    epsilon is the reference's 0.01 x OTT default, which OTT computes per week from that
    week's cost, so the median over weeks (they differ by a few %) is used, expressed in
    one-cell costs (``res_km``, as ``loss.w2.epsilon_cells`` takes it); threshold 5e-2,
    at most 5,000 iterations, the plain regularised cost (no debiasing). Everything else is
    ours (warm start, scan over weeks, momentum, envelope gradient).
    """
    costs = reference_costs(distance_km, index)
    eps = np.median([REF_EPSILON_FACTOR * float(geometry.Geometry(cost_matrix=c).epsilon)
                     for c in costs])
    d = np.minimum(np.asarray(distance_km, float), np.pi * EARTH_RADIUS_KM)  # all active cells
    top = float((d / 100.0).max() ** REF_DIST_POW)  # what location.cell_cost divides by
    unit = (float(res_km) / 100.0) ** REF_DIST_POW / top  # ground_cost.one_cell_cost
    return W2Config(cost="dist_pow", cost_pow=REF_DIST_POW, epsilon_cells=float(eps) / top / unit,
                    threshold=REF_THRESHOLD, max_iterations=REF_MAX_ITERATIONS, debiased=False)


def reference_w2(mu: jax.Array, targets: jax.Array, costs: list, index: WeekIndex,
                 threshold: float = REF_THRESHOLD, max_iterations: int = REF_MAX_ITERATIONS):
    """Sum over weeks of the regularised OT cost, one cold-started solve per week (a loop).

    Args:
        mu, targets: (W, n_max) slot-layout distributions (a week's real cells come first).
        costs: W arrays (n_t, n_t) from :func:`reference_costs` (traced arguments).

    Returns:
        (sum of reg_ot_cost, max iterations over weeks).
    """
    total, iters = 0.0, 0
    for t, w in enumerate(index.week_of_marginal()):
        n = int(index.valid[w].sum())
        a = mu[t, :n] + MASS_FLOOR  # zero masses give NaN gradients (solver_notes.md)
        b = jax.lax.stop_gradient(targets[t, :n] + MASS_FLOOR)
        eps = REF_EPSILON_FACTOR * geometry.Geometry(cost_matrix=costs[t]).epsilon
        geom = geometry.Geometry(cost_matrix=costs[t], epsilon=eps)
        out = linear.solve(geom, a / a.sum(), b / b.sum(), threshold=threshold,
                           max_iterations=max_iterations,
                           implicit_diff=implicit_differentiation.ImplicitDiff())
        total = total + out.reg_ot_cost
        iters = jnp.maximum(iters, out.n_iters)
    return total, iters


def make_reference_update(index: WeekIndex, loss_cfg: LossConfig, optimizer):
    """Jitted training step with the reference W2 as location loss (same shape as train.make_update).

    The step is ``update(state, problem, costs)``; state as in training, with an empty loss state.
    """

    def objective(params, problem: Problem, costs):
        mu, M = marginals(params, index)
        w2, iters = reference_w2(mu, problem.targets, costs, index)
        dist = distance.distance_per_transition(M, problem.dist_cost).sum()
        ent = entropy.entropy_term(mu, M)
        total = loss_cfg.obs_weight * w2 + loss_cfg.dist_weight * dist - loss_cfg.ent_weight * ent
        return total, {"total": total, "w2": w2, "sinkhorn_iterations": iters}

    def update(state, problem, costs):
        (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(state["params"], problem, costs)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(terms["total"])
        new = {"params": params, "opt_state": opt_state, "loss_state": state["loss_state"],
               "step": state["step"] + 1}
        return new, terms, finite

    return jax.jit(update, donate_argnums=(0,))
