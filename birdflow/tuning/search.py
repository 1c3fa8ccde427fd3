"""The outer loop of ``birdflow tune``: downhill steps on θ from stationary inner fits.

Every evaluated θ is one row of ``trajectory.csv``: accepted steps (``accepted`` 1) and the
trials the step rule (:mod:`descent`) rejected, with the inner fit's stationarity, the linear
solve's accuracy signals (CG residual, the hypergradient's change over the last CG steps,
``damping_share``) and the time. The step at which the stop rule ends the tune has no
hypergradient (it would go unused: NaN in those columns). An outer step is never taken from a
fit that is not stationary: the fit is retried with 3x the Newton iterations, and a trial whose
fit still stops short counts as rejected. A checkpoint after every accepted step makes a killed
tune resume where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from birdflow.runs import write_history_csv
from birdflow.training.checkpoint import save_checkpoint
from birdflow.tuning import descent
from birdflow.tuning.hypergrad import Hypergradient
from birdflow.tuning.inner import THETA_NAMES
from birdflow.tuning.tunedir import TRAJECTORY_CSV

log = logging.getLogger("birdflow.tuning.search")


@dataclass
class Parts:
    """What the loop calls: ``fit``, ``implicit``, ``outer`` (jitted L_out of the logits),
    ``monitors`` (validation mean ll, weakest weekly correlation, of the logits), ``unrolled``
    (or None), ``loss_se`` (the tuning loss's standard error) and ``space``, where the fit
    runs (:class:`birdflow.tuning.inner.Inner` or
    :class:`birdflow.tuning.kernel_form.KernelForm`; None: the logits)."""

    fit: object
    implicit: object
    outer: object
    monitors: tuple
    unrolled: object = None
    space: object = None
    loss_se: float = 0.0  # the tuning loss's standard error over the tuning intervals (nats)

    def logits(self, params, theta):
        return params if self.space is None else self.space.logits(params, jnp.asarray(theta))

    def warm(self, params, theta_from, theta_to):
        return params if self.space is None else self.space.warm(params, theta_from, theta_to)


def _continued(res, more):
    """``more``, a fit continued from ``res`` at the same θ, with ``res``'s step and HVP counts
    added and its week blocks kept for the hypergradient when ``more`` built none."""
    more.steps += res.steps
    more.hvps += res.hvps
    if more.blocks is None:
        more.blocks = res.blocks
    return more


def _stationary_fit(parts: Parts, params, theta, state, max_steps: int):
    """The fit at θ from ``params``, retried once with 3x the Newton iterations. Each fit
    chooses its own preconditioner (``tune.inner.precond``): a fit started with the blocks of
    the previous θ's fit was 1.5x faster on zoo_leapfrog (L2) but stalled a W2 refit in a
    non-convex region, where the blocks' inverted |eigenvalues| amplify the directions of
    negative curvature (``docs/concepts/tuning.md``)."""
    res = parts.fit(params, theta, state, max_steps)
    if not res.converged and np.isfinite(res.loss):
        log.info("inner fit at |grad| %.2g after %d Newton steps; retrying with %d more",
                 res.grad_norm, res.steps, 3 * max_steps)
        res = _continued(res, parts.fit(res.params, theta, res.state, 3 * max_steps))
    return res


def _hypergradient(parts: Parts, res, theta, v, damping: float, max_damping: float):
    """The hypergradient, its CG preconditioned by the fit's week blocks where the fit built
    them. A failed (finite) solve with the mass diagonal is solved again with the blocks,
    probed here (the kernel form; they are kept on ``res`` for its later solves); one that
    still fails is retried with 10x the damping up to the cap."""
    h = parts.implicit(res.params, theta, res.state, v, damping, blocks=res.blocks)
    if not h.ok and not h.negative and res.blocks is None and np.all(np.isfinite(h.grad)):
        res.blocks = parts.implicit.blocks(res.params, theta, res.state)
        if res.blocks is not None:
            log.info("%s; solving again with each week's block as CG's preconditioner",
                     h.message.split(";")[0])
            h = parts.implicit(res.params, theta, res.state, v, damping, blocks=res.blocks)
    while not h.ok and np.all(np.isfinite(h.grad)) and damping * 10 <= max_damping * (1 + 1e-9):
        log.warning("%s; retrying with tune.solve.damping %.0e", h.message, damping * 10)
        damping *= 10
        h = parts.implicit(res.params, theta, res.state, None, damping, blocks=res.blocks)
    if h.ok and parts.unrolled is not None:
        h.grad = np.asarray(parts.unrolled(res.params, theta, res.state), float)
    return h


def _refine(parts: Parts, ts, res, theta, gtol: float):
    """The fit ``res`` continued to ``gtol`` (3x the refit's Newton iterations); its step and
    HVP counts include those of ``res``."""
    return _continued(res, parts.fit(res.params, theta, res.state, 3 * ts.inner.max_steps, gtol))


def _accurate_hypergradient(parts: Parts, ts, res, theta, v, damping: float):
    """(fit, hypergradient), refined until both accuracy signals hold (at most
    ``tune.inner.refits`` refinements): the fit is continued to a 10x smaller gradient than it
    reached, and the system solved again from the last solution. Two signals, each measured
    along the Hessian's flattest directions, where a small gradient norm says little:

    - ``fit_change`` (``|vᵀ∇_w L_in|``, the first-order change of L_out from finishing the
      fit) above ``tune.solve.max_fit_change · max(1, |L_out|)``: the fit is refined;
    - ``damping_share`` above ``tune.solve.max_share``: the fit is refined *and* the damping
      lowered 100x (not below ``tune.solve.min_damping``).

    A solve that meets negative curvature (the fit is not at a minimum) is refined the same way.
    """
    h = _hypergradient(parts, res, theta, v, damping, ts.solve.max_damping)
    refits = 0
    while not h.ok and h.negative and refits < ts.inner.refits:  # not at a minimum: fit closer
        gtol, refits = min(ts.inner.gtol, res.grad_norm) / 10, refits + 1
        log.info("%s; refining the inner fit to |grad| %.0e", h.message.split(";")[0], gtol)
        res = _refine(parts, ts, res, theta, gtol)
        h = _hypergradient(parts, res, theta, None, damping, ts.solve.max_damping)
    while h.ok and parts.unrolled is None and refits < ts.inner.refits:
        wide = h.damping_share > ts.solve.max_share
        loose = h.fit_too_loose(ts.solve.max_fit_change)
        if not (wide or loose):
            break
        gtol, refits = min(ts.inner.gtol, res.grad_norm) / 10, refits + 1
        lower = max(float(h.damping) / 100, ts.solve.min_damping) if wide else float(h.damping)
        log.info("fit_change %.2g (tune.solve.max_fit_change %g), damping share %.2g "
                 "(tune.solve.max_share %g): refining the inner fit to |grad| %.0e, damping "
                 "%.0e", h.fit_change, ts.solve.max_fit_change, h.damping_share,
                 ts.solve.max_share, gtol, lower)
        more = _refine(parts, ts, res, theta, gtol)
        if more.converged or more.grad_norm < res.grad_norm:
            more.converged = more.converged or more.grad_norm <= ts.inner.gtol
            res = more
        else:
            log.info("the refined fit stopped at |grad| %.2g > %.0e (round-off); solving "
                     "from the fit at |grad| %.2g", more.grad_norm, gtol, res.grad_norm)
            if lower >= float(h.damping):
                break
        better = _hypergradient(parts, res, theta, h.v, lower, ts.solve.max_damping)
        if not better.ok:
            log.warning("%s; keeping the hypergradient at damping share %.2g, fit_change %.2g",
                        better.message, h.damping_share, h.fit_change)
            break
        h = better
    return res, h


def _unsolved(outer_loss: float, state: dict) -> Hypergradient:
    """The hypergradient of the step the tune ends on, not solved (it would go unused): a NaN
    gradient, the last solve's v and damping kept for a resumed tune, which solves it first."""
    return Hypergradient(np.full(len(THETA_NAMES), np.nan), outer_loss, state["v"], 0, np.nan,
                         False, "not solved: the stop rule ended the tune here",
                         float(state["damping"]))


def _row(step, trial, theta, res, loss, parts, accepted, h=None, radius=np.nan) -> dict:
    val_ll, min_cor = parts.monitors
    logits = parts.logits(res.params, theta)
    g = h.grad if h is not None else np.full(len(THETA_NAMES), np.nan)
    return {"step": step, "trial": trial, "accepted": int(accepted),
            **{n: float(x) for n, x in zip(THETA_NAMES, np.asarray(theta), strict=True)},
            "outer_loss": loss, "validation_ll": float(val_ll(logits)),
            "min_distr_cor": float(min_cor(logits)),
            "hypergrad_norm": float(np.linalg.norm(g)),
            **{f"grad_{n}": float(x) for n, x in zip(THETA_NAMES, g, strict=True)},
            "inner_steps": res.steps, "inner_hvps": res.hvps, "inner_grad_norm": res.grad_norm,
            "inner_converged": int(res.converged), "inner_loss": res.loss,
            "cg_steps": h.cg_steps if h else 0, "cg_residual": h.residual if h else np.nan,
            "cg_change": h.change if h else np.nan, "damping": h.damping if h else np.nan,
            "damping_share": h.damping_share if h else np.nan,
            "fit_change": h.fit_change if h else np.nan, "radius": radius}


def run(ts, parts: Parts, state: dict, traj: dict, start: int, free, lo, hi, tune_dir,
        progress) -> tuple[str, str]:
    """Outer steps from ``start``; returns (failure message or '', why it ended)."""
    t0 = time.perf_counter() - (traj["time_s"][-1] if traj.get("time_s") else 0.0)
    d_set = ts.descent

    def log_row(row):
        row["best_outer_loss"] = float(state["best"]["loss"])
        row["time_s"] = time.perf_counter() - t0
        n = len(traj.get("step", []))  # a column new since a resumed tune began: NaN before
        for k, v in row.items():
            traj.setdefault(k, [np.nan] * n).append(v)
        write_history_csv(tune_dir, traj)
        (tune_dir / "loss_history.csv").replace(tune_dir / TRAJECTORY_CSV)

    def keep(theta, res, h):
        state.update(theta=jnp.asarray(theta), params=res.params, loss_state=res.state, v=h.v,
                     loss=jnp.asarray(h.outer_loss), grad=jnp.asarray(h.grad),
                     damping=jnp.asarray(h.damping))
        if h.outer_loss < float(state["best"]["loss"]):
            state["best"] = {"theta": jnp.asarray(theta), "params": res.params,
                             "loss": jnp.asarray(h.outer_loss)}

    def fail(step, what, theta):
        return (f"outer step {step}: {what} at θ = {np.asarray(theta).round(4).tolist()}", "")

    if start == 0:
        theta = np.asarray(state["theta"])
        res = _stationary_fit(parts, state["params"], theta, state["loss_state"],
                              ts.first_max_steps)
        if not res.converged:
            return fail(0, f"the first inner fit stopped at |grad| {res.grad_norm:.2g} > "
                        f"tune.inner.gtol {ts.inner.gtol:g} after {res.steps} Newton steps; "
                        "raise tune.first_max_steps or tune.inner.gtol", theta)
        res, h = _accurate_hypergradient(parts, ts, res, theta, None, ts.solve.damping)
        if not h.ok:
            return fail(0, h.message, theta)
        keep(theta, res, h)
        log_row(_row(0, 0, theta, res, h.outer_loss, parts, True, h, float(state["radius"])))
        save_checkpoint(tune_dir, 1, state, traj)
        start = 1
    if not np.all(np.isfinite(np.asarray(state["grad"]))):  # resumed at the step the tune
        theta = np.asarray(state["theta"], float)  # ended on (killed before it finished)
        res, h = _accurate_hypergradient(
            parts, ts, parts.fit(state["params"], theta, state["loss_state"]), theta,
            state["v"], float(state["damping"]))
        if not h.ok:
            return fail(start - 1, h.message, theta)
        keep(theta, res, h)
    stop = descent.Stop(d_set, parts.loss_se)
    for step in range(start, ts.steps + 1):
        theta, loss = np.asarray(state["theta"], float), float(state["loss"])
        g = np.where(free, np.asarray(state["grad"], float), 0.0)
        if np.linalg.norm(descent.projected(g, theta, free, lo, hi)) <= d_set.gtol:
            return "", f"converged: projected hypergradient below {d_set.gtol:g}"
        radius, B = float(state["radius"]), np.asarray(state["B"], float)

        def evaluate(trial, new, theta=theta):
            res = _stationary_fit(parts, parts.warm(state["params"], theta, new), new,
                                  state["loss_state"], ts.inner.max_steps)
            return (float(parts.outer(parts.logits(res.params, new))) if res.converged
                    else np.nan), res

        def rejected(trial, new, new_loss, res, radius, shrunk, step=step, loss=loss):
            progress(step, trial, new_loss, new, False)
            log.info("outer step %d trial %d rejected: L_out %.6g vs %.6g (inner %s); radius "
                     "%.3g -> %.3g", step, trial, new_loss, loss,
                     "stationary" if res.converged else f"|grad| {res.grad_norm:.2g}", radius,
                     shrunk)
            log_row(_row(step, trial, new, res, new_loss, parts, False, radius=radius))

        t, radius, why = descent.trials(B, g, theta, loss, radius, free, lo, hi, d_set,
                                        evaluate, rejected)
        if t is None:
            state["radius"] = jnp.asarray(radius)
            return "", (f"{why} from θ = {theta.round(4).tolist()}" if why.startswith("conv")
                        else f"{why} in outer step {step}")
        progress(step, t.index, t.loss, t.x, True)
        why = stop.after(loss, t.loss, t.s, step)
        if why:  # the step the tune ends on solves no hypergradient
            res, h = t.fit, _unsolved(t.loss, state)
        else:
            res, h = _accurate_hypergradient(parts, ts, t.fit, t.x, state["v"],
                                             float(state["damping"]))
            if not h.ok:
                return fail(step, h.message, t.x)
            g_new = np.where(free, h.grad, 0.0)
            B_new, radius_new = descent.after_accept(B, t.radius, g, g_new, t.d, t.s, loss,
                                                     h.outer_loss, d_set.max_radius)
            state["B"], state["radius"] = jnp.asarray(B_new), jnp.asarray(radius_new)
        keep(t.x, res, h)
        log_row(_row(step, t.index, t.x, res, h.outer_loss, parts, True, None if why else h,
                     t.radius))
        save_checkpoint(tune_dir, step + 1, state, traj)
        if why:
            return "", why
    return "", f"stopped after tune.steps = {ts.steps} accepted outer steps"
