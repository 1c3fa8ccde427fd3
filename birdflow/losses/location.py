"""Location losses: how far each modelled weekly distribution is from the S&T target.

* L2 (BirdFlowPy): ``||mu_t - s_t||^2`` per marginal-week.
* W2: entropic optimal-transport cost (OTT-JAX Sinkhorn ``reg_ot_cost``) between ``mu_t``
  and ``s_t`` over that week's slots, all weeks in one vmapped solve, optionally debiased
  (Sinkhorn divergence ``W(mu, s) - W(mu, mu)/2 - W(s, s)/2``, one batched solve per term).

W2 cost (see :func:`cell_cost`): squared Euclidean distance between projected cell centres
divided by the squared diameter of the active cells (or, as in the W2 research code,
``(d_km / 100)^pow`` divided by its maximum), so costs lie in [0, 1]; ``epsilon`` here is in
those units (training sets it in one-cell costs, :mod:`birdflow.losses.blur`). Cold solves
(all-zero warm start) anneal epsilon from the largest cost down to it.

Padding slots never enter a solve with zero weight: every slot gets a floor mass
``MASS_FLOOR`` (so no potential is -inf and no gradient NaN), padding slots sit at a common
far-away point (cost 0 among themselves, ``PAD_COST`` to any real cell), so the padding
block decouples from the real cells and adds only an O(n_max * MASS_FLOOR) constant.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation, sinkhorn

from birdflow.losses import blur, grid_kernel, online_cost, sinkhorn_implicit
from birdflow.losses.ground_cost import (  # noqa: F401  (re-exported)
    COSTS,
    MASS_FLOOR,
    PAD_COST,
    SlotCost,
    SlotGeometry,
    WeeklyCost,
    cell_cost,
    one_cell_cost,
    slot_cost,
)
from birdflow.types import WeeklyDistr

PerWeek = Float[Array, "week"]  # one value per one-way marginal

GRAD_MODES = ("implicit", "danskin", "unroll")
LINEAR_SOLVES = ("cg", "direct")  # grad_mode implicit: sinkhorn_implicit.SolveSettings.method


def l2(mu: WeeklyDistr, targets: WeeklyDistr) -> PerWeek:
    """Squared L2 error per marginal-week; (T+1, n_max) x2 -> (T+1,). Padding adds 0."""
    return jnp.sum((mu - targets) ** 2, axis=-1)


def _solver(threshold: float, max_iterations: int, grad_mode: str,
            symmetric: bool = False, inner_iterations: int = 10, momentum: float = 1.0,
            fixed_iterations: int | None = None, tolerance: float | None = None,
            linear_solve: str = "cg"):
    """An OTT Sinkhorn for ``danskin``/``unroll``; implicit: :class:`SolveSettings` around one
    (its linear solves by ``linear_solve``: "cg" or "direct").

    ``fixed_iterations`` k (amortised solves): k iterations, then the marginal error is
    checked every k iterations against ``tolerance`` (``threshold`` if None) up to
    ``max_iterations``, so a solve stops at k iterations only when its error is below the
    tolerance; ``converged`` says whether it ended below it. ``tolerance`` also bounds where
    the implicit gradient's correction is used (:class:`sinkhorn_implicit.SolveSettings`).
    """
    tolerance = threshold if tolerance is None else tolerance
    kw = {"threshold": threshold, "max_iterations": max_iterations,
          "inner_iterations": inner_iterations}
    if fixed_iterations is not None:
        # OTT measures the error at the last of every k iterations once past min_iterations
        kw.update(threshold=tolerance, min_iterations=fixed_iterations - 1,
                  inner_iterations=fixed_iterations,
                  max_iterations=max(max_iterations, 2 * fixed_iterations))
    if momentum != 1.0:  # over-relaxation of the a != b solve
        kw["momentum"] = acceleration.Momentum(start=0, value=momentum)
    if symmetric:  # a == b: averaged parallel updates (Feydy et al. 2019, as OTT's divergence)
        kw.update(parallel_dual_updates=True, momentum=acceleration.Momentum(start=0, value=0.5))
    if grad_mode == "implicit":  # our IFT derivatives (sinkhorn_implicit); OTT only solves
        inner = sinkhorn.Sinkhorn(implicit_diff=implicit_differentiation.ImplicitDiff(),
                                  use_danskin=True, **kw)
        return sinkhorn_implicit.SolveSettings(inner, max_error=max(tolerance, threshold),
                                               method=linear_solve)
    if grad_mode == "danskin":  # envelope theorem: potentials treated as constants
        return sinkhorn.Sinkhorn(implicit_diff=implicit_differentiation.ImplicitDiff(),
                                 use_danskin=True, **kw)
    if grad_mode == "unroll":  # backpropagate through every iteration
        return sinkhorn.Sinkhorn(implicit_diff=None, **kw)
    raise ValueError(f"unknown grad_mode {grad_mode!r}; use one of {GRAD_MODES}")


def _floor(p: jax.Array) -> jax.Array:
    p = p + MASS_FLOOR
    return p / p.sum(axis=-1, keepdims=True)


def _to_solve(p: jax.Array, cost) -> jax.Array:
    """Slot distributions as a solve takes them: floored (box layout for a grid cost)."""
    return cost.to_box(p) if isinstance(cost, grid_kernel.GridCost) else _floor(p)


def n_solves(debiased: bool) -> int:
    """Problems per marginal-week in the batched solve (3 when debiased)."""
    return 3 if debiased else 1


def default_week_batch() -> int:
    """``week_batch`` for -1 ("auto"): weeks one after another on CPU, all at once elsewhere.

    On CPU a week's solve stops as soon as that week converges (a vmapped loop runs every
    week until the slowest one has), and one week's cost stays in cache.
    """
    return 1 if jax.default_backend() == "cpu" else 0


def last_error(errors: jax.Array) -> jax.Array:
    """The last L1 marginal error an OTT Sinkhorn recorded (``errors``: -1 = not reached).

    Entries before ``min_iterations`` are inf (not computed); the result is finite whenever
    the solver measured its error at least once (always after its last iteration).
    """
    idx = jnp.maximum(jnp.sum(errors != -1) - 1, 0)
    return errors[idx]


def _slot_geom(cost_cells, slot_cell, epsilon=None):
    return SlotGeometry(cost_cells, slot_cell, epsilon=epsilon)


def _dense_geom(cost_matrix, epsilon=None):
    return geometry.Geometry(cost_matrix=cost_matrix, epsilon=epsilon)


def _batch_solve(solver, a, b, cost, epsilon, f0, g0, week_batch: int, valid=None):
    """Solve W problems (a, b: (W, n_max)); ``week_batch`` 0 = one vmap, k = lax.map chunks of k.

    ``solver`` is an OTT Sinkhorn, or a :class:`sinkhorn_implicit.SolveSettings` (implicit
    gradients; then ``valid`` (W, n_max) marks the real slots). Returns (values, f, g,
    iterations, converged, fallback, error) per week; ``fallback`` is False except for
    implicit solves whose gradient fell back to the envelope gradient; ``error`` is the L1
    marginal error Sinkhorn last measured (:func:`last_error`).
    """
    shared = isinstance(cost, SlotCost)
    online = isinstance(cost, online_cost.OnlineCost)
    boxes = isinstance(cost, grid_kernel.GridCost)  # a, b already in box layout
    if (online or boxes) and isinstance(solver, sinkhorn_implicit.SolveSettings):
        raise ValueError("the online and grid W2 costs support grad_mode danskin only")
    per_week = cost.box if boxes else cost.slot_cell if shared or online else cost
    implicit = isinstance(solver, sinkhorn_implicit.SolveSettings)
    if valid is None:
        valid = jnp.ones(a.shape, bool)

    def one(x):
        a_w, b_w, c_w, f_w, g_w, v_w = x
        if implicit:
            make, args = (_slot_geom, (cost.cell_cost, c_w)) if shared else (_dense_geom, (c_w,))
            val, f, g, it, conv, fb, err = sinkhorn_implicit.reg_ot(solver, make, a_w, b_w, args,
                                                                    v_w, epsilon, f_w, g_w)
            neg_ent = jnp.sum(jax.scipy.special.xlogy(a_w, a_w) + jax.scipy.special.xlogy(b_w, b_w))
            return (val - epsilon * neg_ent,  # OTT's reg_ot_cost (KL to a x b)
                    f, g, jax.lax.stop_gradient(it).astype(jnp.int32),
                    jax.lax.stop_gradient(conv) > 0.5, jax.lax.stop_gradient(fb) > 0.5,
                    jax.lax.stop_gradient(err))
        eps = blur.cold_schedule(epsilon, f_w, g_w, solver.max_iterations)  # cold: anneal
        if boxes:
            geom = cost.geometry(eps)
        elif online:
            geom = cost.geometry(c_w, epsilon=eps)
        elif shared:
            geom = SlotGeometry(cost.cell_cost, c_w, epsilon=eps)
        else:
            geom = geometry.Geometry(cost_matrix=c_w, epsilon=eps)
        out = solver(linear_problem.LinearProblem(geom, a_w, b_w), init=(f_w, g_w))
        return (out.reg_ot_cost, out.f, out.g, out.n_iters.astype(jnp.int32), out.converged,
                jnp.zeros((), bool), jax.lax.stop_gradient(last_error(out.errors)))

    xs = (a, b, per_week, f0, g0, valid)
    if week_batch < 0:  # on CPU one week after another, so each stops at its own iteration
        # count (amortised solves extend only the weeks above tolerance): at n = 1000 on the
        # grid kernel, 1.36x the L2 step against 2.11x with all weeks in one vmap
        week_batch = default_week_batch()
    if week_batch == 0 or week_batch >= a.shape[0]:
        return jax.vmap(one)(xs)
    return jax.lax.map(one, xs, batch_size=None if week_batch == 1 else week_batch)


class W2Result(NamedTuple):
    """What :func:`w2` returns.

    Attributes:
        values: (W,) entropic OT cost (or Sinkhorn divergence) per marginal-week.
        potentials: (f, g), each (n_solves * W, n_max) (box size for a grid cost), for the
            next warm start.
        iterations: (n_solves * W,) int32 Sinkhorn iterations per solve.
        converged: (n_solves * W,) bool, Sinkhorn reached ``threshold`` (W(s, s) included,
            as solved or as cached).
        fallback: (n_solves * W,) bool, implicit mode only: the gradient's linear solve
            failed, or the marginal error was above the tolerance, and that solve used the
            envelope gradient (known when a gradient is taken).
        errors: (n_solves * W,) L1 marginal error of the returned potentials (the last one
            Sinkhorn measured): below ``threshold`` when converged; what an amortised
            (``fixed_iterations``) solve reports instead of convergence.
    """

    values: jax.Array
    potentials: tuple[jax.Array, jax.Array]
    iterations: jax.Array
    converged: jax.Array
    fallback: jax.Array
    errors: jax.Array


def self_cost(p: WeeklyDistr, cost: WeeklyCost | SlotCost, epsilon: float | jax.Array,
              init: tuple[jax.Array, jax.Array], *, threshold: float = 1e-3,
              max_iterations: int = 2000, symmetric: bool = True, inner_iterations: int = 10,
              week_batch: int = 0):
    """Regularised OT cost W(p, p) per week, no gradient (the debiasing term of a target).

    Returns (values (W,), f, g (W, n_max), iterations (W,) int32, converged (W,) bool,
    fallback (W,) bool, always False, errors (W,) last L1 marginal error).
    """
    p = jax.lax.stop_gradient(_to_solve(p, cost))
    solver = _solver(threshold, max_iterations, "danskin", symmetric=symmetric,
                     inner_iterations=inner_iterations)
    out = _batch_solve(solver, p, p, jax.lax.stop_gradient(cost), epsilon,
                       *(jax.lax.stop_gradient(x) for x in init), week_batch)
    return jax.lax.stop_gradient(out)


def w2(mu: WeeklyDistr, targets: WeeklyDistr,
       cost: WeeklyCost | SlotCost, epsilon: float | jax.Array,
       init: tuple[jax.Array, jax.Array], *, threshold: float = 1e-3,
       max_iterations: int = 2000, grad_mode: str = "implicit", debiased: bool = False,
       target_self=None, symmetric: bool = False, inner_iterations: int = 10,
       week_batch: int = 0, momentum: float = 1.0,
       fixed_iterations: int | None = None, tolerance: float | None = None,
       linear_solve: str = "cg") -> W2Result:
    """Entropic OT cost per marginal-week, all weeks in one batched solve (3 when debiased).

    Args:
        mu, targets: (W, n_max) model and S&T distributions in slot layout (padding = 0).
        cost: (W, n_max, n_max) ground cost from :func:`slot_cost` (max real cost 1), a
            :class:`SlotCost` (the same costs gathered on the fly from one shared matrix), an
            online cost, or a :class:`birdflow.losses.grid_kernel.GridCost` (per-week boxes;
            potentials then live on the boxes).
        epsilon: entropic regularisation in cost units (scalar, may be traced).
        init: warm-start potentials (f, g), each (n_solves * W, n_max) (zeros = cold start).
        threshold: L1 marginal error at which Sinkhorn stops; max_iterations: its cap.
        grad_mode: "implicit" (implicit-function-theorem derivatives of W(mu, s) and
            W(mu, mu), :mod:`birdflow.losses.sinkhorn_implicit`) | "danskin" (envelope
            gradient) | "unroll" (backpropagation through the iterations).
        debiased: return the Sinkhorn divergence instead of the regularised cost.
        target_self: debiased only: the W(s, s) term already solved, as :func:`self_cost`
            returns it (it does not depend on mu); None solves it here.
        symmetric: solve the W(mu, mu) and W(s, s) terms with averaged parallel updates.
        inner_iterations: Sinkhorn iterations between two convergence checks.
        week_batch: 0 = all weeks in one vmap; k > 0 = k weeks at a time (1 = a scan, each
            week stopping at its own convergence); -1 = :func:`default_week_batch`.
        momentum: over-relaxation of the W(mu, s) Sinkhorn updates (1 = none).
        fixed_iterations: None = solve W(mu, s) and W(mu, mu) to ``threshold``; k = k
            warm-started iterations each, continued k at a time while the L1 marginal error
            is above ``tolerance`` (amortised Sinkhorn: the potentials converge across
            training steps; the gradient uses them as they are). ``target_self``, when
            solved here, is always solved to ``threshold``.
        tolerance: the amortised solves' largest L1 marginal error (None = ``threshold``);
            implicit mode: a week-solve whose error is above it (and above ``threshold``)
            falls back to the envelope gradient.
        linear_solve: implicit mode: the optimality system's solves by "cg" or "direct"
            (:class:`sinkhorn_implicit.SolveSettings`).
    """
    a, b = _to_solve(mu, cost), jax.lax.stop_gradient(_to_solve(targets, cost))
    solver = _solver(threshold, max_iterations, grad_mode, inner_iterations=inner_iterations,
                     momentum=momentum, fixed_iterations=fixed_iterations, tolerance=tolerance,
                     linear_solve=linear_solve)
    f0, g0 = (jax.lax.stop_gradient(p) for p in init)
    w = mu.shape[0]
    if isinstance(cost, grid_kernel.GridCost):  # every box cell carries (floor) mass
        valid = jnp.ones(a.shape, bool)
    elif isinstance(cost, SlotCost | online_cost.OnlineCost):
        valid = cost.slot_cell >= 0
    else:  # padding slots carry no mass on either side
        valid = (jax.lax.stop_gradient(mu) > 0) | (jax.lax.stop_gradient(targets) > 0)
    solve = partial(_batch_solve, epsilon=epsilon, week_batch=week_batch, valid=valid)

    if not debiased:
        vals, f, g, iters, conv, fb, err = solve(solver, a, b, cost, f0=f0, g0=g0)
    else:  # W(s, s) has no gradient: solved (or cached) without any derivative
        sym = _solver(threshold, max_iterations, grad_mode, symmetric=symmetric,
                      inner_iterations=inner_iterations, fixed_iterations=fixed_iterations,
                      tolerance=tolerance, linear_solve=linear_solve)
        main = solve(solver, a, b, cost, f0=f0[:w], g0=g0[:w])
        auto = solve(sym, a, a, cost, f0=f0[w:2 * w], g0=g0[w:2 * w])
        if target_self is None:
            target_self = self_cost(targets, cost, epsilon, (f0[2 * w:], g0[2 * w:]),
                                    threshold=threshold, max_iterations=max_iterations,
                                    symmetric=symmetric, inner_iterations=inner_iterations,
                                    week_batch=week_batch)
        vals, f, g, iters, conv, fb, err = (jnp.concatenate(x) for x in
                                            zip(main, auto, target_self, strict=True))
        vals = vals[:w] - 0.5 * vals[w:2 * w] - 0.5 * vals[2 * w:]
    return W2Result(vals, (jax.lax.stop_gradient(f), jax.lax.stop_gradient(g)), iters, conv,
                    jax.lax.stop_gradient(fb), jax.lax.stop_gradient(err))
