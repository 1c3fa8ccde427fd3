"""The outer step rule: a projected quasi-Newton step on θ that is only accepted downhill.

From θ with tuning loss L and hypergradient g, a trial ``θ' = clip(θ + d)`` uses the BFGS
direction ``d = −B g`` (B the inverse-Hessian estimate of the free components; components at a
bound that d would push outwards are frozen for the step), cut to the trust radius
``max_i |d_i| <= r``. The trial costs one warm-started inner refit and one outer loss; it is
accepted when the loss fell by Armijo's sufficient decrease ``L' <= L + c gᵀ(θ' − θ)``
(so never rises). The radius then follows the ratio ρ of the actual to the quadratic model's
predicted decrease (Nocedal & Wright, Algorithm 4.1): it doubles after a full-length step with
ρ > 3/4 and halves to the step's length with ρ < 1/4. A rejected trial shrinks the radius to
the minimiser of the quadratic through L, gᵀs and L' along the step, between a tenth and half
of the step (a quarter when the trial failed), and tries again. Where the loss does not curve
up along an accepted step (``sᵀy <= 0``, no BFGS update possible) and the step was inside the
radius, B doubles, so that steps lengthen while the loss keeps falling faster than modelled.
:func:`trials` (one outer step: trials until one is accepted), :func:`after_accept` and
:class:`Stop` (the convergence tests) are these rules for the loops, which differ only in what
a trial fits: ``birdflow tune``'s :mod:`search` (one species, checkpointed) and the joint
tunes' :mod:`joint` (one fit per species). The loop stops on
convergence — the loss changed by less than ``ftol`` (relative) *and* θ by less than ``xtol`` in one accepted
step, three accepted steps in a row each changed the loss by less than ``se_tol`` times its
standard error over the tuning intervals (or ``ftol``), the projected hypergradient vanished,
or the radius fell below ``min_radius`` (no descent left at this resolution) — or after
``steps`` accepted steps.

A fixed-step Adam moved dist_pow from 0.4 to its bound in two steps on a real species and the
tuning loss rose for four steps in a row; this rule cannot do that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

STRETCH = 2.0  # an interior step along which the loss did not curve up: the next is this much longer
FLAT_STEPS = 3  # accepted steps in a row whose loss change is flat (flat_tolerance) end the loop


@dataclass(frozen=True)
class DescentSettings:
    """``tune.*`` settings of the outer step rule (see ``conf/tune.yaml``)."""

    steps: int = 30
    radius: float = 0.5
    min_radius: float = 1e-3
    max_radius: float = 2.0
    armijo: float = 1e-4
    ftol: float = 1e-5
    se_tol: float = 0.01
    xtol: float = 1e-3
    gtol: float = 1e-6
    max_trials: int = 8


def projected(g: np.ndarray, theta: np.ndarray, free: np.ndarray, lo: np.ndarray,
              hi: np.ndarray) -> np.ndarray:
    """The free components of g that a descent step could follow (zero where a bound blocks)."""
    at_lo = (theta <= lo + 1e-12) & (g > 0)
    at_hi = (theta >= hi - 1e-12) & (g < 0)
    return np.where(free & ~at_lo & ~at_hi, g, 0.0)


def direction(B: np.ndarray, g: np.ndarray, theta, free, lo, hi, radius: float) -> np.ndarray:
    """``−B g`` restricted to the unblocked free components, cut to ``max |d_i| <= radius``."""
    gp = projected(g, theta, free, lo, hi)
    active = gp != 0
    d = np.zeros_like(g)
    if active.any():
        sub = B[np.ix_(active, active)]
        d[active] = -sub @ gp[active]
        if d @ gp >= 0:  # B lost positive definiteness on this face: steepest descent
            d = -gp
    big = np.max(np.abs(d), initial=0.0)
    return d * (radius / big) if big > radius else d


def bfgs_update(B: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inverse-Hessian BFGS update; skipped when the curvature condition ``sᵀy > 0`` fails.

    The first update rescales B by ``sᵀy / yᵀy`` (Nocedal & Wright 6.20), which sets the
    step length from the measured curvature instead of the hypergradient's raw scale.
    """
    sy = float(s @ y)
    if not sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
        return B
    if np.allclose(B, np.eye(len(B))):
        B = np.eye(len(B)) * sy / float(y @ y)
    rho = 1.0 / sy
    V = np.eye(len(B)) - rho * np.outer(s, y)
    return V @ B @ V.T + rho * np.outer(s, s)


def is_full(d: np.ndarray, radius: float) -> bool:
    """Whether direction ``d`` was cut to (or reaches) the trust radius."""
    return bool(np.max(np.abs(d), initial=0.0) >= radius * (1 - 1e-9))


def model_after(B: np.ndarray, s: np.ndarray, y: np.ndarray, full: bool) -> np.ndarray:
    """The inverse-Hessian model after an accepted step ``s`` whose gradient changed by ``y``.

    BFGS when the loss curved up along the step (``sᵀy > 0``). When it did not, BFGS has
    nothing to learn and the old model, fitted to curvature the loss no longer has, keeps the
    steps short while the hypergradient grows: on the banding birds ten accepted L2 steps in a
    row were 0.02 long inside a radius of 0.115, each with ``sᵀy < 0``. Such an interior step
    doubles B instead (the trust radius still caps the next step, and a rejected trial shrinks it).
    """
    if float(s @ y) <= 0 and not full:
        return STRETCH * B
    return bfgs_update(B, s, y)


def predicted_decrease(B: np.ndarray, g: np.ndarray, s: np.ndarray) -> float:
    """``−(gᵀs + ½ sᵀB⁻¹s)`` on the components s moves: the BFGS model's decrease for step s."""
    moved = s != 0
    if not moved.any():
        return 0.0
    sub, ss = B[np.ix_(moved, moved)], s[moved]
    try:
        curv = float(ss @ np.linalg.solve(sub, ss))
    except np.linalg.LinAlgError:
        curv = 0.0
    return -(float(g @ s) + 0.5 * max(curv, 0.0))


def radius_after(radius: float, step: np.ndarray, full: bool, rho: float, max_radius: float) -> float:
    """The trust radius after an accepted step of ratio ``rho`` (actual / predicted decrease)."""
    if rho > 0.75 and full:
        return min(2 * radius, max_radius)
    if rho < 0.25:
        return 0.5 * float(np.max(np.abs(step)))
    return radius


def next_radius(radius: float, B: np.ndarray, g: np.ndarray, d: np.ndarray, step: np.ndarray,
                loss: float, loss_new: float, max_radius: float) -> float:
    """The trust radius after accepting ``step`` (direction ``d`` cut to ``radius``) from the
    point with loss ``loss`` and gradient ``g`` to ``loss_new``; ``B`` the model before it."""
    full = is_full(d, radius)
    pred = predicted_decrease(B, g, step)
    rho = (loss - loss_new) / pred if pred > 0 else 1.0
    return radius_after(radius, step, full, rho, max_radius)


def after_accept(B: np.ndarray, radius: float, g: np.ndarray, g_new: np.ndarray, d: np.ndarray,
                 step: np.ndarray, loss: float, loss_new: float,
                 max_radius: float) -> tuple[np.ndarray, float]:
    """(model, trust radius) after accepting ``step`` (direction ``d`` cut to ``radius``) from
    the point with loss ``loss`` and gradient ``g`` to ``loss_new`` and ``g_new``. The radius
    is judged by the model *before* the step, which predicted it."""
    full = is_full(d, radius)
    return (model_after(B, step, g_new - g, full),
            next_radius(radius, B, g, d, step, loss, loss_new, max_radius))


def radius_after_rejection(loss: float, loss_new: float, g: np.ndarray, step: np.ndarray) -> float:
    """The trust radius for the next trial after rejecting ``step`` (:func:`backtrack`)."""
    return float(np.max(np.abs(step))) * backtrack(loss, loss_new, g, step)


def flat_tolerance(loss: float, loss_se: float, s: DescentSettings) -> float:
    """A loss change below this is flat: ``ftol`` relative, or ``se_tol`` standard errors."""
    return max(s.ftol * max(abs(loss), 1e-12), s.se_tol * loss_se)


def flat_message(what: str, tol: float, loss_se: float, s: DescentSettings, steps: int,
                 step: int) -> str:
    return (f"converged: {what} changed by less than {tol:.2g} (tune.se_tol {s.se_tol:g} of its "
            f"standard error {loss_se:.2g}, or tune.ftol {s.ftol:g} relative) in {steps} "
            f"accepted steps in a row, to outer step {step}")


def backtrack(loss: float, loss_new: float, g: np.ndarray, step: np.ndarray) -> float:
    """The factor for the next trial after a rejected step: the minimiser of the quadratic
    with value L, slope gᵀs at 0 and value L' at 1, in [0.1, 0.5] (0.25 when L' is not finite)."""
    slope = float(g @ step)
    if not np.isfinite(loss_new) or slope >= 0:
        return 0.25
    curv = loss_new - loss - slope
    return float(np.clip(-slope / (2 * curv), 0.1, 0.5)) if curv > 0 else 0.5


def accept(loss_new: float, loss: float, g: np.ndarray, step: np.ndarray, armijo: float) -> bool:
    """Armijo's sufficient decrease (the loss never rises on an accepted step)."""
    return bool(np.isfinite(loss_new) and loss_new <= loss + armijo * float(g @ step)
                and loss_new <= loss)


def converged(loss_new: float, loss: float, step: np.ndarray, s: DescentSettings) -> bool:
    """Relative change of the loss below ftol and of θ (max norm) below xtol."""
    return (abs(loss - loss_new) <= s.ftol * max(abs(loss), 1e-12)
            and float(np.max(np.abs(step), initial=0.0)) <= s.xtol)


@dataclass
class Trial:
    """The trial :func:`trials` accepted: its index in the outer step, the point ``x``, the
    model step ``d`` (before clipping to the bounds), the step taken ``s``, its loss, what the
    caller's evaluation returned with it (``fit``) and the trust radius it was drawn in."""

    index: int
    x: np.ndarray
    d: np.ndarray
    s: np.ndarray
    loss: float
    fit: object
    radius: float


def trials(B: np.ndarray, g: np.ndarray, x: np.ndarray, loss: float, radius: float, free, lo, hi,
           s: DescentSettings, evaluate: Callable, rejected: Callable
           ) -> tuple[Trial | None, float, str]:
    """One outer step: trials in the trust radius until one is accepted (:func:`accept`).

    ``evaluate(index, x_new) -> (loss, fit)``, the loss NaN where the trial failed (an inner
    fit that did not become stationary). ``rejected(index, x_new, loss_new, fit, radius,
    shrunk)`` hears of each rejected trial before the radius shrinks to ``shrunk``.

    Returns ``(trial, radius, why)``: the accepted :class:`Trial` and ``""``, or ``None`` and
    why the loop ends (no downhill step longer than ``min_radius``: converged; ``max_trials``
    rejected trials: stopped), with the radius it reached.
    """
    for index in range(s.max_trials):
        d = direction(B, g, x, free, lo, hi, radius)
        new = np.clip(x + d, lo, hi)
        step = new - x
        new_loss, fit = evaluate(index, new)
        if accept(new_loss, loss, g, step, s.armijo):
            return Trial(index, new, d, step, float(new_loss), fit, radius), radius, ""
        shrunk = radius_after_rejection(loss, new_loss, g, step)
        rejected(index, new, new_loss, fit, radius, shrunk)
        radius = shrunk
        if radius < s.min_radius:
            return None, radius, (f"converged: no downhill step longer than tune.min_radius "
                                  f"{s.min_radius:g}")
    return None, radius, f"stopped: {s.max_trials} rejected trials"


class Stop:
    """The convergence tests after each accepted step (module doc), with the count of flat
    steps in a row they keep. ``what`` names the loss and ``name`` the point in messages."""

    def __init__(self, s: DescentSettings, loss_se: float, what: str = "tuning loss",
                 name: str = "θ"):
        self.s, self.loss_se, self.what, self.name, self.flat = s, loss_se, what, name, 0

    def after(self, loss: float, loss_new: float, step: np.ndarray, index: int) -> str:
        """Why the loop ends after outer step ``index`` took ``step`` (``""``: it goes on)."""
        if converged(loss_new, loss, step, self.s):
            return (f"converged: {self.what} changed by {abs(loss - loss_new):.2g} and "
                    f"{self.name} by {np.max(np.abs(step)):.2g} in outer step {index}")
        # a flat valley: the point keeps sliding (beyond xtol) while the loss changes by less
        # than the birds can tell apart (a small share of its standard error) or than ftol
        tol = flat_tolerance(loss, self.loss_se, self.s)
        self.flat = self.flat + 1 if abs(loss - loss_new) <= tol else 0
        if self.flat >= FLAT_STEPS:
            return flat_message(self.what, tol, self.loss_se, self.s, FLAT_STEPS, index)
        return ""
