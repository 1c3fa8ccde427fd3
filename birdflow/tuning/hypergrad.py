"""Hypergradients of ``θ ↦ L_out(w*(θ))``: implicit (matrix-free) and unrolled.

Implicit: at a stationary point ``∇_w L_in(w*, θ) = 0`` the implicit function theorem gives

    dL_out/dθ = −∂²_{θw} L_in · (∂²_{ww} L_in + λI)^{-1} ∇_w L_out,

computed without forming a matrix: Hessian-vector products by forward-over-reverse
(``jax.jvp`` of ``jax.grad``; or centred finite differences of the gradient, which W2's
danskin gradient needs — its forward-over-reverse HVP is silently wrong, solver_notes.md), a
lineax CG solve warm-started from the previous solution, and the cross term as one VJP.

The softmax makes ``L_in`` invariant to adding a constant to a row of logits (and padding
logits do not enter at all), so the Hessian is singular along those directions. We fix the
gauge: the right-hand side and every CG iterate are projected onto logits with zero mean over
each row's real slots and zero padding (:func:`project_gauge`). ``∇_w L_out`` and the cross
term are orthogonal to those directions, so the projection changes nothing but keeps round-off
from growing there; the small damping λ only guards against rows with almost no mass (nearly
flat directions) and indefinite curvature away from the exact minimum.

Unrolled: backpropagate through the last K gradient steps ``w ← w − η ∇_w L_in(w, θ)`` started
at the (stopped) inner solution; as K grows it tends to the implicit value, with memory growing
linearly in K (``python -m birdflow.bench.hypergrad``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from birdflow.model import markov
from birdflow.tuning.inner import Inner


def gauge_mask(index: markov.WeekIndex) -> dict:
    """{"z0": (n_max,), "Z": like the logits} 1 where a logit is real, 0 in padding.

    ``Z`` is (T, n_max, n_max), or (T, n_max, K) on the sparse layout (real: ``nbr >= 0``).
    """
    valid = np.asarray(index.valid, float)
    t = np.arange(index.n_transitions)
    if index.nbr is not None:  # padding rows of nbr are all -1
        Z = (index.nbr >= 0).astype(float)
    else:
        Z = valid[t][:, :, None] * valid[(t + 1) % index.n_weeks][:, None, :]
    return {"z0": jnp.asarray(valid[0]), "Z": jnp.asarray(Z)}


def mass_diagonal(params: dict, index: markov.WeekIndex) -> dict:
    """Diagonal preconditioner ``mu_t(i) P_t(i,j) (1 − P_t(i,j))`` (and ``mu_0 (1 − mu_0)``).

    The curvature of row i of transition t is proportional to the mass ``mu_t(i)`` it carries
    times the softmax curvature ``diag(p) − pp^T``; rows with little mass make the Hessian
    badly conditioned (measured on a 6-week, 11-cell grid, ent_weight 0.1: condition number
    9.7e4 on the gauge subspace, 206 after scaling by this diagonal; the exact Jacobi
    diagonal gave 118). Dense or sparse layout alike (``M`` has the logits' shape).
    """
    mu, M = markov.marginals(params, index)
    P = M / jnp.maximum(M.sum(-1, keepdims=True), jnp.finfo(M.dtype).tiny)
    return {"z0": mu[0] * (1 - mu[0]), "Z": mu[:-1, :, None] * P * (1 - P)}


def project_gauge(tree: dict, mask: dict) -> dict:
    """Remove each row's mean over its real slots and zero the padding (the shift gauge)."""
    def one(x, m):
        m = m.astype(x.dtype)
        n = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
        return (x - (x * m).sum(-1, keepdims=True) / n) * m
    return {k: one(tree[k], mask[k]) for k in tree}


@dataclass(frozen=True)
class SolveSettings:
    """Linear solve settings (``tune.solve``): damping λ, CG tolerances, HVP mode."""

    damping: float = 1e-6
    rtol: float = 1e-5  # CG tolerances, relative to max|∇_w L_out| (see make_implicit)
    atol: float = 1e-5
    max_steps: int = 500
    hvp: str = "jvp"  # "jvp" (forward-over-reverse) or "fd" (centred differences of the gradient)
    fd_step: float = 1e-3
    precondition: bool = True  # CG preconditioned by :func:`mass_diagonal`
    accept_residual: float = 1e-4  # a solve that hit max_steps still counts if ||Av - b|| / ||b|| <= this
    max_damping: float = 0.0  # a failed solve is retried with 10x the damping up to this (0: never)


@dataclass
class Hypergradient:
    grad: np.ndarray  # (4,) dL_out/dθ (frozen components not zeroed here)
    outer_loss: float
    v: dict  # solution of the linear system (the next warm start)
    cg_steps: int
    residual: float  # ||(H + λI)v − b|| / ||b||
    ok: bool
    message: str
    damping: float = 0.0  # the λ this solve used


def make_hvp(inner: Inner, mode: str, fd_step: float = 1e-3):
    """``hvp(params, theta, state, v) -> H v`` for the logit Hessian of L_in."""
    grad = jax.grad(inner.loss)
    if mode == "jvp":
        def hvp(params, theta, state, v):
            return jax.jvp(lambda p: grad(p, theta, state), (params,), (v,))[1]
    elif mode == "fd":
        def hvp(params, theta, state, v):
            h = fd_step / jnp.maximum(jnp.sqrt(sum(jnp.vdot(x, x) for x in v.values())), 1e-30)
            plus = grad(jax.tree_util.tree_map(lambda p, d: p + h * d, params, v), theta, state)
            minus = grad(jax.tree_util.tree_map(lambda p, d: p - h * d, params, v), theta, state)
            return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * h), plus, minus)
    else:
        raise ValueError(f"tune.solve.hvp: unknown mode {mode!r}; choose 'jvp' or 'fd'")
    return hvp


def make_implicit(inner: Inner, outer_loss, settings: SolveSettings):
    """Jitted ``(params, theta, state, v0, damping) -> (grad, L_out, v, steps, residual, ok)``.

    The returned ``implicit(params, theta, state, v0=None, damping=None)`` solves with
    ``damping`` (default ``settings.damping``; a traced argument, so changing it does not
    recompile) and reports the damping it used on the :class:`Hypergradient`.

    ``outer_loss(params) -> scalar`` is the tuning loss (it does not depend on θ).
    """
    mask = gauge_mask(inner.index)
    hvp = make_hvp(inner, settings.hvp, settings.fd_step)

    def run(params, theta, state, v0, damping):
        value, g_out = jax.value_and_grad(outer_loss)(params)
        b = project_gauge(g_out, mask)
        # lineax checks |r_i| <= atol + rtol |b_i| element by element: solve for b / max|b|
        scale = jnp.maximum(jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in b.values()])),
                            jnp.finfo(value.dtype).tiny)
        b_unit = {k: x / scale for k, x in b.items()}

        def matvec(v):
            v = project_gauge(v, mask)
            hv = hvp(params, theta, state, v)
            return project_gauge(jax.tree_util.tree_map(lambda a, x: a + damping * x,
                                                        hv, v), mask)

        structure = jax.eval_shape(lambda: b_unit)
        op = lx.FunctionLinearOperator(matvec, structure, tags=lx.positive_semidefinite_tag)
        options = {"y0": project_gauge({k: x / scale for k, x in v0.items()}, mask)}
        if settings.precondition:
            diag = mass_diagonal(params, inner.index)
            floor = 1e-6 * jnp.max(diag["Z"]) + damping
            inv = {k: 1.0 / (diag[k] + floor) for k in diag}
            options["preconditioner"] = lx.FunctionLinearOperator(
                lambda v: project_gauge({k: inv[k] * project_gauge(v, mask)[k] for k in v}, mask),
                structure, tags=lx.positive_semidefinite_tag)
        solver = lx.CG(rtol=settings.rtol, atol=settings.atol, max_steps=settings.max_steps)
        sol = lx.linear_solve(op, b_unit, solver, options=options, throw=False)
        v_unit = project_gauge(sol.value, mask)
        r = jax.tree_util.tree_map(lambda a, c: a - c, matvec(v_unit), b_unit)
        norm = lambda t: jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(t)))  # noqa: E731
        residual = norm(r) / jnp.maximum(norm(b_unit), jnp.finfo(value.dtype).tiny)
        v = {k: x * scale for k, x in v_unit.items()}
        grad_w = jax.grad(inner.loss)

        def cross(th):
            gw = grad_w(params, th, state)
            return sum(jnp.vdot(gw[k], v[k]) for k in v)

        hyper = -jax.grad(cross)(theta)
        solved = (sol.result == lx.RESULTS.successful) | (residual <= settings.accept_residual)
        ok = solved & jnp.all(jnp.isfinite(hyper))
        return hyper, value, v, sol.stats["num_steps"], residual, ok

    run = jax.jit(run)

    def implicit(params, theta, state, v0=None, damping=None) -> Hypergradient:
        if v0 is None:
            v0 = jax.tree_util.tree_map(jnp.zeros_like, params)
        damping = settings.damping if damping is None else float(damping)
        hyper, value, v, steps, residual, ok = run(params, jnp.asarray(theta), state, v0,
                                                   jnp.asarray(damping, jnp.asarray(theta).dtype))
        hyper, value, steps, residual, ok = jax.device_get((hyper, value, steps, residual, ok))
        msg = ""
        if not np.all(np.isfinite(hyper)):
            msg = f"non-finite hypergradient {np.asarray(hyper).tolist()}"
        elif not ok:
            msg = (f"the linear solve (lineax CG) did not converge in {int(steps)} steps "
                   f"(relative residual {float(residual):.2e}, damping {damping:.0e}); raise "
                   "tune.solve.damping / tune.solve.max_damping or "
                   "tune.solve.max_steps, or fit the inner problem more tightly")
        return Hypergradient(np.asarray(hyper, float), float(value), v, int(steps),
                             float(residual), bool(ok), msg, damping)

    implicit.jitted = run  # (params, theta, state, v0) -> ...; for the benchmark
    return implicit


def make_unrolled(inner: Inner, outer_loss, k: int, lr: float, precondition: bool = True):
    """``(params, theta, state) -> dL_out(w_K)/dθ`` through K gradient steps of size lr.

    The steps are ``w ← w − lr D^{-1} ∇_w L_in(w, θ)`` from the (stopped) inner solution, with
    D the :func:`mass_diagonal` at that solution (fixed) when ``precondition``, else 1. Their
    fixed point is the inner solution either way, so as K grows the result tends to the
    implicit hypergradient; the preconditioner makes that happen in far fewer steps.
    """
    grad_w = jax.grad(inner.loss)
    mask = gauge_mask(inner.index)

    def through(theta, params, state):
        start = jax.lax.stop_gradient(params)
        if precondition:
            diag = mass_diagonal(start, inner.index)
            floor = 1e-6 * jnp.max(diag["Z"])
            inv = {key: mask[key] / (diag[key] + floor) for key in diag}
        else:
            inv = mask

        def step(p, _):
            g = grad_w(p, theta, state)
            return {key: p[key] - lr * inv[key] * g[key] for key in p}, None

        p, _ = jax.lax.scan(step, start, None, length=k)
        return outer_loss(p)

    grad_theta = jax.jit(jax.grad(through))

    def unrolled(params, theta, state):
        return grad_theta(jnp.asarray(theta), params, state)

    unrolled.jitted = grad_theta  # (theta, params, state) -> grad; for the benchmark
    return unrolled
