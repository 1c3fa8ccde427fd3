"""Joint tuning: one θ (or one trait model) for several species, by implicit differentiation.

The joint tuning loss is the intervals-weighted sum of the species' tuning losses,

    L(φ) = Σ_s w_s L_out,s(w*_s(θ_s(φ))) + ridge/2 · ||A||²,   w_s = n_s / Σ_r n_r,

with ``n_s`` the tuning intervals of species s (so L is the mean negative log-likelihood over
all tuning intervals pooled) and ``θ_s(φ)`` a :class:`birdflow.tuning.traits.ThetaMap` (pooled
or a trait model). Each species keeps its own inner fit; its hypergradient ``h_s`` comes from
the single-species machinery (:func:`birdflow.tuning.search._accurate_hypergradient`, with
its refits while a fit is too loose for its solve), and ``dL/dφ = Σ_s w_s J_sᵀ h_s``.

The outer step rule is ``birdflow tune``'s (:mod:`descent`): a BFGS direction in a trust
radius, one warm-started refit per species per trial (each from its previous fit's marginals,
the fit space's ``warm``), accepted only on Armijo's sufficient decrease of L, the same radius
rules after a rejection and after an accepted step, and the same convergence tests (the joint
loss's standard error combines the species'). A trial where some species' fit does not become
stationary is rejected. No checkpoints: a joint tune is short and starts over.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from birdflow.tuning import descent, search
from birdflow.tuning.settings import TuneSettings
from birdflow.tuning.traits import ThetaMap

log = logging.getLogger("birdflow.tuning.joint")


@dataclass
class Member:
    """One species of a joint tune: its :class:`search.Parts`, intervals weight and current fit
    (``params`` in the fit space at ``theta``, the loss state, the last linear solve ``v``)."""

    name: str
    parts: search.Parts
    params: dict
    state: object
    theta: np.ndarray
    n_intervals: int
    v: object = None
    damping: float | None = None


@dataclass
class JointResult:
    phi: np.ndarray
    loss: float
    grad: np.ndarray  # dL/dφ at phi; NaN when the stop rule ended the loop (not computed)
    ended: str
    stopped: str = ""
    trajectory: list[dict] = field(default_factory=list)
    fits: list = field(default_factory=list)  # each member's FitResult at phi


def weights(members: list[Member]) -> np.ndarray:
    n = np.array([m.n_intervals for m in members], float)
    return n / n.sum()


def fit_all(members, tmap: ThetaMap, phi, ts: TuneSettings, max_steps: int):
    """Each member refitted at ``θ_s(φ)`` from its current fit (warm); None where not stationary."""
    fits = []
    for s, m in enumerate(members):
        theta = tmap.theta(phi, s)
        res = search._stationary_fit(m.parts, m.parts.warm(m.params, m.theta, theta), theta,
                                     m.state, max_steps)
        if not res.converged:
            log.info("%s: inner fit at |grad| %.2g, not stationary", m.name, res.grad_norm)
            return None
        fits.append(res)
    return fits


def joint_loss(members, tmap: ThetaMap, phi, fits) -> tuple[float, np.ndarray]:
    """L(φ) of stationary fits and the per-species tuning losses."""
    losses = np.array([float(m.parts.outer(m.parts.logits(f.params, tmap.theta(phi, s))))
                       for s, (m, f) in enumerate(zip(members, fits, strict=True))])
    return float(weights(members) @ losses + tmap.penalty(phi)[0]), losses


def hypergradient(members, tmap: ThetaMap, phi, fits, ts: TuneSettings):
    """(fits, dL/dφ, L, per-species losses, failure message or ''), each species'
    hypergradient refined as ``birdflow tune`` refines it; members keep their solves."""
    w = weights(members)
    penalty, grad = tmap.penalty(phi)
    losses, out = np.zeros(len(members)), []
    for s, (m, res) in enumerate(zip(members, fits, strict=True)):
        theta = tmap.theta(phi, s)
        damping = ts.solve.damping if m.damping is None else m.damping
        res, h = search._accurate_hypergradient(m.parts, ts, res, theta, m.v, damping)
        if not h.ok:
            return fits, grad, np.nan, losses, f"{m.name}: {h.message}"
        m.v, m.damping = h.v, h.damping
        grad = grad + w[s] * tmap.pullback(phi, s, h.grad)
        losses[s] = h.outer_loss
        out.append(res)
    return out, grad, float(w @ losses + penalty), losses, ""


def _keep(members, tmap, phi, fits):
    for s, (m, f) in enumerate(zip(members, fits, strict=True)):
        m.params, m.state, m.theta = f.params, f.state, tmap.theta(phi, s)


def run(members: list[Member], tmap: ThetaMap, ts: TuneSettings, phi0=None) -> JointResult:
    """The joint outer loop from ``φ0`` (default: θ0 with A = 0); see module doc."""
    t0, d_set, rows = time.perf_counter(), ts.descent, []
    lo, hi = tmap.bounds()
    free = np.ones(tmap.size, bool)
    phi = np.clip(tmap.start() if phi0 is None else np.asarray(phi0, float), lo, hi)

    def record(step, trial, phi, loss, losses, accepted, fits=None):
        row = {"step": step, "trial": trial, "accepted": int(accepted),
               **dict(zip(tmap.names(), np.asarray(phi).tolist(), strict=True)),
               "joint_loss": loss, **{f"loss_{m.name}": x for m, x in zip(members, losses, strict=True)}}
        if fits is not None and members[0].parts.monitors:
            for s, (m, f) in enumerate(zip(members, fits, strict=True)):
                row[f"validation_ll_{m.name}"] = float(m.parts.monitors[0](
                    m.parts.logits(f.params, tmap.theta(phi, s))))
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)

    def result(ended, stopped=""):
        (log.error if stopped else log.info)(stopped or ended)
        return JointResult(phi, loss, g, ended, stopped, rows, fits)

    fits = fit_all(members, tmap, phi, ts, ts.first_max_steps)
    loss, g = np.nan, np.zeros(tmap.size)
    if fits is None:
        return result("", "the first inner fits did not become stationary; raise "
                      "tune.first_max_steps or tune.inner.gtol")
    fits, g, loss, losses, msg = hypergradient(members, tmap, phi, fits, ts)
    if msg:
        return result("", f"outer step 0: {msg}")
    _keep(members, tmap, phi, fits)
    record(0, 0, phi, loss, losses, True, fits)
    B, radius = np.eye(tmap.size), d_set.radius
    # the joint loss's standard error: the intervals-weighted mean of independent species' losses
    loss_se = float(np.sqrt(np.sum((weights(members) * [m.parts.loss_se for m in members]) ** 2)))
    stop = descent.Stop(d_set, loss_se, "joint loss", "φ")
    for step in range(1, ts.steps + 1):
        if np.linalg.norm(descent.projected(g, phi, free, lo, hi)) <= d_set.gtol:
            return result(f"converged: projected hypergradient below {d_set.gtol:g}")

        def evaluate(trial, new):
            trial_fits = fit_all(members, tmap, new, ts, ts.inner.max_steps)
            if not trial_fits:
                return np.nan, (None, np.full(len(members), np.nan))
            new_loss, losses = joint_loss(members, tmap, new, trial_fits)
            return new_loss, (trial_fits, losses)

        def rejected(trial, new, new_loss, fit, radius, shrunk, step=step, loss=loss):
            log.info("joint step %d trial %d rejected: L %.6g vs %.6g; radius %.3g -> %.3g",
                     step, trial, new_loss, loss, radius, shrunk)
            record(step, trial, new, new_loss, fit[1], False)

        t, radius, why = descent.trials(B, g, phi, loss, radius, free, lo, hi, d_set, evaluate,
                                        rejected)
        if t is None:
            return result(why if why.startswith("conv") else f"{why} in outer step {step}")
        why = stop.after(loss, t.loss, t.s, step)
        if why:  # the step the loop ends on solves no hypergradients
            trial_fits, losses = t.fit
            g_new, new_loss = np.full(tmap.size, np.nan), t.loss
        else:
            trial_fits, g_new, new_loss, losses, msg = hypergradient(members, tmap, t.x,
                                                                     t.fit[0], ts)
            if msg:
                return result("", f"outer step {step}: {msg}")
            B, radius = descent.after_accept(B, t.radius, g, g_new, t.d, t.s, loss, new_loss,
                                             d_set.max_radius)
        phi, g, loss, fits = t.x, g_new, new_loss, trial_fits
        _keep(members, tmap, phi, fits)
        record(step, t.index, phi, loss, losses, True, fits)
        log.info("joint step %d: L %.6g, φ %s", step, loss, np.round(phi, 3).tolist())
        if why:
            return result(why)
    return result(f"stopped after tune.steps = {ts.steps} accepted outer steps")
