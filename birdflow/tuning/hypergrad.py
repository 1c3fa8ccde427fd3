"""Hypergradients of ``θ ↦ L_out(w*(θ))``: implicit (matrix-free) and unrolled.

Implicit: at a stationary point ``∇_w L_in(w*, θ) = 0`` the implicit function theorem gives

    dL_out/dθ = −∂²_{θw} L_in · H⁺ ∇_w L_out,   H = ∂²_{ww} L_in on the gauge subspace,

computed without forming a matrix (:mod:`curvature`): Hessian-vector products by
forward-over-reverse (or centred finite differences of the gradient), preconditioned CG for
``(H + λD) v = ∇_w L_out`` warm-started from the previous solution, and the cross term as one
VJP. The damping is relative to the mass diagonal D and tiny by default (1e-8): ``H + λD`` is
``D^½ (H̃ + λI) D^½`` with H̃ the mass-scaled Hessian, so λ is measured against H̃'s spectrum,
not against the row masses. Each solve reports its CG residual, ``damping_share`` =
``||λDv|| / ||b||``, the part of the right-hand side the damping rather than H accounts for,
and ``fit_change`` = ``|vᵀ∇_w L_in|``: the change of L_out that finishing the inner fit (one
more Newton step, ``δ = −H⁻¹∇_w L_in``) would make, to first order. A fit whose gradient is
small in norm can still sit far from its optimum along the Hessian's flattest directions, and
those are the directions L_out weighs most; there the hypergradient is off by as much as the
fit is (at BirdFlowPy's weights: |∇| 3e-9, fit_change 0.05, errors 68-138 %; refined to |∇|
2e-10, fit_change 3e-4, errors <= 1.4 %).

Unrolled: backpropagate through the last K gradient steps ``w ← w − η ∇_w L_in(w, θ)`` started
at the (stopped) inner solution; as K grows it tends to the implicit value, with memory growing
linearly in K (``python -m birdflow.bench.hypergrad``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.tuning import curvature
from birdflow.tuning.inner import Inner


@dataclass(frozen=True)
class SolveSettings:
    """Linear solve settings (``tune.solve``).

    Attributes:
        damping: λ of ``(H + λD) v = ∇L_out``, relative to the mass diagonal D (see
            :mod:`curvature`); its share of the solution is reported as ``damping_share``.
        rtol: CG stops at ``||b − Av|| <= rtol ||b||``...
        wtol: ...or when the hypergradient changed by at most this (relative) over 10 CG steps.
        max_steps: CG steps.
        hvp: "linearize" or "jvp" (forward-over-reverse, exact; see
            :func:`curvature.make_hvp`) or "fd" (centred differences of the gradient).
        fd_step: the finite-difference step (hvp "fd").
        precondition: CG preconditioned by the mass diagonal (in the kernel form, by each
            week's block of potentials where the inner fit used them, or after a solve with
            the diagonal failed; :func:`curvature.block_inverse`).
        accept_residual: a solve that hit max_steps still counts at this relative residual.
        max_damping: a failed solve is retried with 10x the damping up to this (0: never).
        min_damping: a solve with too large a damping share is redone at 100x less damping,
            down to this.
        max_share: a hypergradient whose ``damping_share`` is above this is recomputed from an
            inner fit refined to a 10x smaller gtol (``tune.inner.refits`` times at most): the share
            grows with the fit's distance from stationarity along the Hessian's flat
            directions (measured at BirdFlowPy's weights: 0.24 at gtol 1e-6 with 16-25 %
            hypergradient error, 0.02 at 1e-7 with <= 3.6 %).
        max_fit_change: ... and so is one whose ``fit_change`` (the first-order change of
            L_out from finishing the fit) is above this times ``max(1, |L_out|)``.
    """

    damping: float = 1e-8
    rtol: float = 1e-8
    wtol: float = 1e-3
    max_steps: int = 5000
    hvp: str = "linearize"
    fd_step: float = 1e-4
    precondition: bool = True
    accept_residual: float = 1e-6
    max_damping: float = 1e-4
    max_share: float = 0.05
    min_damping: float = 1e-12
    max_fit_change: float = 1e-4


@dataclass
class Hypergradient:
    grad: np.ndarray  # (4,) dL_out/dθ (frozen components not zeroed here)
    outer_loss: float
    v: dict  # solution of the linear system (the next warm start)
    cg_steps: int
    residual: float  # ||(H + λD)v − b|| / ||b||
    ok: bool
    message: str
    damping: float = 0.0  # the λ this solve used
    damping_share: float = 0.0  # ||λDv|| / ||b||: how much of b the damping, not H, explains
    change: float = float("inf")  # relative change of the hypergradient over the last 10 CG steps
    negative: bool = False  # CG met negative curvature: the fit is not at a minimum
    fit_change: float = 0.0  # |vᵀ∇_w L_in|: L_out's first-order change from finishing the fit
    blocks: bool = False  # CG was preconditioned by the week blocks, not the mass diagonal

    def fit_too_loose(self, max_fit_change: float) -> bool:
        """Finishing the fit would move L_out by more than ``max_fit_change·max(1, |L_out|)``."""
        return self.fit_change > max_fit_change * max(1.0, abs(self.outer_loss))


def make_implicit(inner: Inner, outer_loss, settings: SolveSettings, block_colors: int = 8):
    """``implicit(params, theta, state, v0=None, damping=None) -> Hypergradient``.

    ``outer_loss(logits) -> scalar`` is the tuning loss of the chain's logits. ``inner`` is
    where the fit runs (:class:`Inner`, or :class:`birdflow.tuning.kernel_form.KernelForm`,
    whose logits also depend on θ directly: that partial derivative is added). ``damping``
    (default ``settings.damping``) is traced, so changing it does not recompile. ``blocks``:
    each week's block inverse (``implicit.blocks``, probed with ``block_colors`` weeks at once,
    or a Newton fit's :attr:`FitResult.blocks`) preconditions CG instead of the mass diagonal.
    """
    hessian = curvature.make_hvp(inner.loss, settings.hvp, settings.fd_step)
    grad_w = jax.grad(inner.loss)
    outer = lambda params, theta: outer_loss(inner.logits(params, theta))  # noqa: E731

    def cross(op, params, theta, state):
        """(n, 4) ∂θ ∇_w L_in, gauge-projected: forward mode, or centred differences (fd)."""
        g = lambda th: op.ravel(grad_w(params, th, state))  # noqa: E731
        if settings.hvp != "fd":
            return jax.jacfwd(g)(theta)
        eye = jnp.eye(theta.size, dtype=theta.dtype) * settings.fd_step
        return jnp.stack([(g(theta + e) - g(theta - e)) / (2 * settings.fd_step) for e in eye],
                         axis=1)

    def run(params, theta, state, v0, damping, blocks=None):
        value, (g_out, g_theta) = jax.value_and_grad(outer, argnums=(0, 1))(params, theta)
        op = curvature.operator(hessian, params, theta, state, inner, damping,
                                settings.precondition)
        if blocks is not None:
            op = curvature.with_blocks(op, blocks)
        J = cross(op, params, theta, state)
        b = op.ravel(g_out)
        sol = curvature.pcg(op, b, op.ravel(v0), settings.rtol, settings.max_steps,
                            watch=J, wtol=settings.wtol)
        share = (jnp.linalg.norm(damping * op.scale * sol.x)
                 / jnp.maximum(jnp.linalg.norm(b), jnp.finfo(b.dtype).tiny))
        fit_change = jnp.abs(jnp.vdot(sol.x, op.ravel(grad_w(params, theta, state))))
        hyper = g_theta - sol.watched
        solved = ((sol.residual <= settings.accept_residual) | (sol.change <= settings.wtol))
        ok = solved & ~sol.negative & jnp.all(jnp.isfinite(hyper))
        return (hyper, value, op.unravel(sol.x), sol.steps, sol.residual, ok, share,
                sol.negative, sol.change, fit_change)

    run = jax.jit(run)

    @jax.jit
    def probe(params, theta, state, damping):
        return curvature.probe_blocks(hessian, params, theta, state, inner, damping,
                                      block_colors)

    def implicit(params, theta, state, v0=None, damping=None, blocks=None) -> Hypergradient:
        if v0 is None:
            v0 = jax.tree_util.tree_map(jnp.zeros_like, params)
        damping = settings.damping if damping is None else float(damping)
        out = run(params, jnp.asarray(theta), state, v0,
                  jnp.asarray(damping, jnp.asarray(theta).dtype), blocks)
        hyper, value, v, steps, residual, ok, share, negative, change, fit_change = out
        hyper, value, steps, residual, ok, share, negative, change, fit_change = jax.device_get(
            (hyper, value, steps, residual, ok, share, negative, change, fit_change))
        msg = ""
        if not np.all(np.isfinite(hyper)):
            msg = f"non-finite hypergradient {np.asarray(hyper).tolist()}"
        elif negative:
            msg = (f"the linear solve met negative curvature after {int(steps)} CG steps "
                   f"(damping {damping:.0e}): the inner fit is not at a minimum; fit it more "
                   "tightly (tune.inner.gtol) or raise tune.solve.damping")
        elif not ok:
            msg = (f"the linear solve (CG) did not converge in {int(steps)} steps "
                   f"(relative residual {float(residual):.2e}, hypergradient still changing by "
                   f"{float(change):.1e} per 10 steps, damping {damping:.0e}); raise "
                   "tune.solve.max_steps or tune.solve.damping, or fit the inner problem more "
                   "tightly")
        return Hypergradient(np.asarray(hyper, float), float(value), v, int(steps),
                             float(residual), bool(ok), msg, damping, float(share), float(change),
                             bool(negative), float(fit_change), blocks is not None)

    def blocks(params, theta, state, damping=None):
        """The week blocks' inverse at ``params`` (:func:`curvature.block_inverse`, probed
        with ``block_colors × n`` products) for ``implicit(..., blocks=)``; None where the
        fit runs in the logits (no potentials)."""
        if "G" not in params:
            return None
        damping = settings.damping if damping is None else float(damping)
        return probe(params, jnp.asarray(theta), state,
                     jnp.asarray(damping, jnp.asarray(theta).dtype))

    implicit.jitted = run  # (params, theta, state, v0, damping, blocks) -> ...; the benchmark
    implicit.blocks = blocks
    return implicit


def make_unrolled(inner: Inner, outer_loss, k: int, lr: float, precondition: bool = True):
    """``(params, theta, state) -> dL_out(w_K)/dθ`` through K gradient steps of size lr.

    The steps are ``w ← w − lr D^{-1} ∇_w L_in(w, θ)`` from the (stopped) inner solution, with
    D the :func:`mass_diagonal` at that solution (fixed) when ``precondition``, else 1. Their
    fixed point is the inner solution either way, so as K grows the result tends to the
    implicit hypergradient; the preconditioner makes that happen in far fewer steps.
    """
    grad_w = jax.grad(inner.loss)
    mask = inner.mask

    def through(theta, params, state):
        start = jax.lax.stop_gradient(params)
        if precondition:
            diag = inner.diagonal(start, jax.lax.stop_gradient(theta))
            floor = 1e-6 * jnp.max(diag["Z" if "Z" in diag else "G"])  # the transitions
            inv = {key: mask[key] / (diag[key] + floor) for key in diag}
        else:
            inv = mask

        def step(p, _):
            g = grad_w(p, theta, state)
            return {key: p[key] - lr * inv[key] * g[key] for key in p}, None

        p, _ = jax.lax.scan(step, start, None, length=k)
        return outer_loss(inner.logits(p, theta))

    grad_theta = jax.jit(jax.grad(through))

    def unrolled(params, theta, state):
        return grad_theta(jnp.asarray(theta), params, state)

    unrolled.jitted = grad_theta  # (theta, params, state) -> grad; for the benchmark
    return unrolled
