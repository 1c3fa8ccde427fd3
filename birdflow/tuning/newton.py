"""Stationary inner fits: truncated Newton (Newton-CG) on the logits.

Each iteration solves ``(H + λD) p = −∇L_in`` by preconditioned CG (:mod:`curvature`: the
same Hessian-vector products, gauge and mass-diagonal scale as the hypergradient) to a relative
residual ``min(0.5, sqrt(|∇L_in|))`` (superlinear convergence near the minimum), measured in
the mass-scaled norm the fit's stationarity is judged in and no tighter than ``gtol / (2|∇|)``
(the last step need only reach gtol), stops CG at a
direction of negative curvature and adds that direction, pointing downhill (so a saddle is
left, not converged to), and backtracks along ``p`` until the Armijo condition holds.
The relative damping λ (Levenberg–Marquardt style) shrinks after a full step and grows after a
shortened one. The fit ends when the mass-scaled gradient norm ``||D^-½ ∇L_in||₂ <= gtol``
(:func:`curvature.scaled_norm`) — where the implicit function theorem behind the hypergradient
holds — or after ``max_steps`` Newton iterations (not converged). The scaled norm, not the
plain one, because a row's gradient carries its mass: a row with little mass can sit far from
its optimum at a plain gradient far below any tolerance, and its Hessian is then indefinite.

The fit runs in the logits (:class:`birdflow.tuning.inner.Inner`) or, by default, in the kernel
form (:class:`birdflow.tuning.kernel_form.KernelForm`: one potential per cell and week), which
has no slowly converging far-transition logits. On the synthetic species L-BFGS needed
400–2,000 steps and often stopped short of gtol 1e-4; Newton in the kernel form reaches 1e-8 in
about ten iterations from the S&T bridge (``python -m birdflow.bench.tuning``). A fit whose
gradient has not fallen 10 % in ``STALL`` iterations is at round-off and stops (not converged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.tuning import curvature

log = logging.getLogger("birdflow.tuning.newton")
STALL = 40  # Newton iterations without a 10 % smaller gradient: at round-off, stop (not converged)
# Slow progress: when the gradient has not halved in ESCALATE Newton iterations, CG's
# preconditioner becomes each week's block (precond "auto", the kernel form) and after that,
# at each such stretch, the CG cap of the fit's remaining directions doubles (at most
# MAX_ESCALATIONS times). Truncated directions make Newton linear; in a flat, badly
# preconditioned valley (zoo_leapfrog's two populations meeting the same winter marginals) it
# stalled at cg_max_steps 200 with the mass diagonal and needed directions of 300-2,000 CG
# steps. A fit that converges fast never reaches either.
ESCALATE = 10
MAX_ESCALATIONS = 3
# A direction of clearly negative curvature is taken at least this long (mass-scaled 2-norm; about the
# RMS logit change it makes, weighted by mass) before backtracking: near a saddle the Newton
# part is tiny, and an escape as short as it slid ~1e-9 per iteration for 30 iterations.
ESCAPE = 0.1
NEGATIVE = 1e-6  # ... when its curvature is clearly negative: the mass-scaled Hessian's diagonal is ~1


@dataclass(frozen=True)
class NewtonSettings:
    """``tune.inner``: a fit is stationary at ``||D^-½ ∇_w L_in||₂ <= gtol``.

    Attributes:
        gtol: the stationarity tolerance (mass-scaled 2-norm of the logit gradient).
        max_steps: Newton iterations per fit (a refit from the previous θ needs a few).
        cg_max_steps: CG steps per Newton direction.
        damping: the first relative damping λ (of ``λD``); adapted per iteration.
        min_damping: λ never goes below this.
        armijo: sufficient decrease ``L(w + tp) <= L(w) + armijo t ∇Lᵀp``.
        max_backtracks: step halvings before the iteration gives up.
        refits: how many times a fit is refined (gtol / 10 each) when its hypergradient's
            damping share is too large (``tune.solve.max_share``).
        cg_norm: "scaled": CG's residual in the preconditioner's norm (the mass-scaled norm
            of ``gtol``), to at most what reaching gtol/2 needs; "plain": the 2-norm.
        form: where the fit runs: "kernel" (:mod:`birdflow.tuning.kernel_form`, one potential
            per cell and week) or "logits" (every transition logit).
        precond: CG's preconditioner: "mass" (the mass diagonal), "block" (each week's
            block of potentials, probed with ``block_colors × n`` products at the start of a
            fit and every ``block_every`` Newton iterations: :func:`curvature.block_inverse`;
            the kernel form only) or "auto": the mass diagonal until the gradient first fails
            to halve in ``ESCALATE`` iterations, the blocks from then on (kernel form; the
            logits keep the diagonal). A fit that converges fast never pays for the probes.
        block_colors: weeks probed at once by "block" (week t's block picks up weeks
            t ± block_colors).
        block_every: Newton iterations between two probes of the blocks (a stale block is
            still a preconditioner; each probe costs ``block_colors × n`` products).
        resolution: the relative change of L_in its evaluation resolves (float64 round-off;
            more for W2, whose value comes from Sinkhorn solves to a threshold). A step that
            promises less, ``|∇Lᵀp| < resolution |L_in|``, is judged by the gradient: taken
            whole when the scaled gradient norm falls, the line search otherwise.
    """

    gtol: float = 1e-6
    max_steps: int = 50
    cg_max_steps: int = 200
    damping: float = 1e-6
    min_damping: float = 1e-10
    armijo: float = 1e-4
    max_backtracks: int = 40
    refits: int = 3
    form: str = "kernel"
    resolution: float = 1e-12
    cg_norm: str = "scaled"
    precond: str = "auto"
    block_colors: int = 8
    block_every: int = 10


@dataclass
class FitResult:
    params: dict
    state: Any
    steps: int  # Newton iterations
    grad_norm: float
    loss: float
    converged: bool
    hvps: int = 0  # Hessian-vector products (CG steps) spent
    blocks: Any = None  # the week blocks' inverse CG used last (precond block/auto), or None


def make_newton(inner, settings: NewtonSettings, hvp_mode: str = "linearize",
                fd_step: float = 1e-4):
    """``fit(params, theta, state, max_steps=None, gtol=None) -> FitResult`` by truncated Newton.

    ``inner`` is where the fit runs: a :class:`birdflow.tuning.inner.Inner` (the logits) or a
    :class:`birdflow.tuning.kernel_form.KernelForm` (``value``, ``loss``, ``mask``,
    ``diagonal``).
    """
    mask = inner.mask
    hessian = curvature.make_hvp(inner.loss, hvp_mode, fd_step)

    first = inner.first_order  # gradients alone: no per-plan inversions (W2)

    @jax.jit
    def value_grad(params, theta, state):
        (value, (_, new_state)), g = jax.value_and_grad(first.value, has_aux=True)(
            params, theta, state)
        g = curvature.project_gauge(g, mask)
        return value, g, curvature.scaled_norm(g, params, theta, inner), new_state

    @jax.jit
    def direction(params, theta, state, g, damping, rtol, cap, blocks):
        op = curvature.operator(hessian, params, theta, state, inner, damping)
        if blocks is not None:
            op = curvature.with_blocks(op, blocks)
        b = -op.ravel(g)
        res = curvature.pcg(op, b, jnp.zeros_like(b), rtol, cap,
                            scaled=settings.cg_norm == "scaled")
        # a direction of negative curvature p: add it, pointing downhill and as long (in the
        # mass-scaled metric) as the Newton part (or as the preconditioned gradient when CG
        # stopped at once), so that a saddle is left instead of converged to
        gf = op.ravel(g)
        x = jnp.where(jnp.all(jnp.isfinite(res.x)), res.x, 0.0)
        p = res.direction
        sign = jnp.where(jnp.vdot(gf, p) > 0, -1.0, 1.0)
        size = lambda v: jnp.sqrt(jnp.vdot(v, op.scale * v))  # noqa: E731
        base = jnp.where(size(x) > 0, size(x), size(op.precond(b)))
        # clearly negative curvature (mass-scaled Rayleigh quotient below -NEGATIVE; at
        # round-off a direction can test non-positive by noise alone): at least ESCAPE long
        clear = jax.lax.cond(
            res.negative, lambda: jnp.vdot(p, op.matvec(p)) < -NEGATIVE * size(p) ** 2,
            lambda: jnp.asarray(False))
        base = jnp.where(clear, jnp.maximum(base, ESCAPE), base)
        escape = sign * p * base / jnp.maximum(size(p), jnp.finfo(b.dtype).tiny)
        x = jnp.where(res.negative & jnp.all(jnp.isfinite(p)), x + escape, x)
        x = jnp.where(jnp.vdot(gf, x) < 0, x, op.precond(b))  # never uphill: steepest descent
        return op.unravel(x), res.steps, jnp.vdot(gf, x)

    @jax.jit
    def block_inverse(params, theta, state, damping):
        return curvature.probe_blocks(hessian, params, theta, state, inner, damping,
                                      settings.block_colors)

    loss = jax.jit(inner.loss)
    step_to = jax.jit(lambda p, d, t: jax.tree_util.tree_map(lambda a, b: a + t * b, p, d))

    def fit(params, theta, state, max_steps: int | None = None,
            gtol: float | None = None) -> FitResult:
        max_steps = settings.max_steps if max_steps is None else int(max_steps)
        gtol = settings.gtol if gtol is None else float(gtol)
        theta = jnp.asarray(theta)
        value, g, gnorm, state = jax.device_get(value_grad(params, theta, state))
        damping, steps, hvps = settings.damping, 0, 0
        best, stalled = gnorm, 0
        cap, ref, slow = settings.cg_max_steps, gnorm, 0  # slow: iterations since |g| halved
        use_blocks, blocks, built = settings.precond == "block", None, 0
        can_block = settings.precond == "auto" and "G" in params  # the kernel form's potentials
        while gnorm > gtol and steps < max_steps and np.isfinite(value) and stalled < STALL:
            rtol = min(0.5, float(np.sqrt(gnorm)))
            if settings.cg_norm == "scaled":  # no tighter than reaching gtol/2 needs (< 0.5
                rtol = max(rtol, 0.5 * gtol / gnorm)  # here: the loop runs while gnorm > gtol)
            if slow >= ESCALATE and can_block and not use_blocks:  # slow: the blocks first
                use_blocks, ref, slow = True, gnorm, 0
            elif slow >= ESCALATE:  # then longer directions
                cap = min(2 * cap, settings.cg_max_steps * 2 ** MAX_ESCALATIONS)
                ref, slow = gnorm, 0
            if use_blocks and (blocks is None or steps - built >= settings.block_every):
                blocks, built = block_inverse(params, theta, state, damping), steps
                hvps += settings.block_colors * int(blocks.shape[-1])
            p, k, slope = direction(params, theta, state, g, damping, rtol, cap, blocks)
            hvps += int(k) + 1
            slope = float(slope)
            log.debug("newton %d: L %.10g |g|_D %.3g, CG %d of %d, slope %.3g, damping %.1e",
                      steps, value, gnorm, int(k), cap, slope, damping)
            if not slope < 0:  # not a descent direction (round-off at the floor): stop
                break
            t, accepted, out = 1.0, None, None
            if -slope < settings.resolution * max(abs(value), 1e-30):
                # the decrease is below what L_in resolves: judge the full step by the gradient
                trial = step_to(params, p, 1.0)
                judged = jax.device_get(value_grad(trial, theta, state))
                if np.isfinite(judged[2]) and judged[2] < gnorm:
                    accepted, out = trial, judged
            for _ in range(0 if accepted is not None else settings.max_backtracks):
                trial = step_to(params, p, t)
                v = float(loss(trial, theta, state))
                if np.isfinite(v) and v <= value + settings.armijo * t * slope:
                    accepted = trial
                    break
                t *= 0.5
            steps += 1
            if accepted is None:
                damping = min(damping * 100, 1e6)
                log.debug("newton: no decrease along p; damping -> %.1e", damping)
                continue
            damping = max(damping / 4, settings.min_damping) if t == 1.0 else damping * 4
            params = accepted
            value, g, gnorm, state = (out if out is not None
                                      else jax.device_get(value_grad(params, theta, state)))
            best, stalled = (gnorm, 0) if gnorm < 0.9 * best else (best, stalled + 1)
            ref, slow = (gnorm, 0) if gnorm < 0.5 * ref else (ref, slow + 1)
        value, gnorm = float(value), float(gnorm)
        ok = bool(np.isfinite(value) and gnorm <= gtol)
        return FitResult(params, state, steps, gnorm, value, ok, hvps, blocks)

    return fit
