"""The outer step rule's pieces (birdflow.tuning.descent) on quadratics, where they are exact."""

from __future__ import annotations

import numpy as np
import pytest

from birdflow.tuning import descent

A = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.2], [0.0, 0.2, 0.5]])  # a positive definite Hessian
g0 = np.array([0.3, -0.5, 0.2])


def quadratic(x: np.ndarray) -> float:
    return float(g0 @ x + 0.5 * x @ A @ x)


def test_predicted_decrease_is_exact_on_a_quadratic_with_the_true_inverse_hessian():
    B = np.linalg.inv(A)
    s = np.array([0.1, 0.2, -0.3])
    assert np.isclose(descent.predicted_decrease(B, g0, s), quadratic(np.zeros(3)) - quadratic(s))
    # a frozen component (s_i = 0) drops out: the model on the moved components only
    s2 = np.array([0.1, 0.0, -0.3])
    moved = np.array([True, False, True])
    B2 = np.linalg.inv(A[np.ix_(moved, moved)])
    B_full = np.eye(3)
    B_full[np.ix_(moved, moved)] = B2
    assert np.isclose(descent.predicted_decrease(B_full, g0, s2), -quadratic(s2))


def test_backtrack_finds_the_minimiser_along_the_step_and_stays_in_bounds():
    s = -3.0 * g0 / np.linalg.norm(g0)  # downhill, long enough to overshoot (t* = 0.34)
    f = lambda t: quadratic(t * s)  # noqa: E731
    t_star = -(g0 @ s) / (s @ A @ s)  # the exact minimiser along s
    factor = descent.backtrack(f(0.0), f(1.0), g0, s)
    assert 0.1 <= t_star <= 0.5 and np.isclose(factor, t_star)
    assert descent.backtrack(f(0.0), np.nan, g0, s) == 0.25  # failed trial: a quarter
    assert descent.backtrack(0.0, 1e6, g0, s) == 0.1  # far overshoot: at least a tenth
    assert descent.backtrack(0.0, -1e-9 + g0 @ s, g0, s) == 0.5  # nearly linear: half


def test_radius_grows_only_on_a_full_step_the_model_predicted():
    s = np.array([0.5, -0.2, 0.0])
    assert descent.radius_after(0.5, s, True, 0.9, 2.0) == 1.0
    assert descent.radius_after(1.5, s, True, 0.9, 2.0) == 2.0  # capped at max_radius
    assert descent.radius_after(0.5, s, False, 0.9, 2.0) == 0.5  # short step: keep
    assert descent.radius_after(0.5, s, True, 0.5, 2.0) == 0.5  # fair model: keep
    assert descent.radius_after(0.5, s, True, 0.1, 2.0) == 0.25  # poor model: half the step


def test_model_stretches_interior_steps_where_the_loss_curves_down():
    """sᵀy <= 0 (no BFGS update possible): an interior step doubles B, a radius-cut one keeps it;
    with positive curvature the update is BFGS's (secant condition B y = s)."""
    B = 0.01 * np.eye(2)
    s, y_down, y_up = np.array([0.02, -0.01]), np.array([-0.1, 0.05]), np.array([0.3, 0.1])
    assert np.allclose(descent.model_after(B, s, y_down, full=False), 2 * B)
    assert np.allclose(descent.model_after(B, s, y_down, full=True), B)
    B_up = descent.model_after(B, s, y_up, full=False)
    assert np.allclose(B_up @ y_up, s) and np.allclose(B_up, descent.bfgs_update(B, s, y_up))
    assert descent.is_full(np.array([0.5, -0.1]), 0.5) and not descent.is_full(np.array([0.2]), 0.5)


def test_steps_lengthen_on_a_concave_stretch_until_the_radius():
    """The banding birds' L2 trajectory in one dimension: the loss L(x) = -x - x²/2 curves down,
    the model's first curvature estimate (B = 0.02) is stale. With the old rule every step stayed
    0.02 * |g| long; now the step doubles each time until the radius (0.5) caps it."""
    grad = lambda x: -1.0 - x  # noqa: E731
    x, B, radius, lengths = 0.0, np.array([[0.02]]), 0.5, []
    for _ in range(8):
        g = np.array([grad(x)])
        d = descent.direction(B, g, np.array([x]), np.array([True]), np.array([-10.0]),
                              np.array([10.0]), radius)
        B = descent.model_after(B, d, np.array([grad(x + d[0])]) - g, descent.is_full(d, radius))
        x, lengths = x + d[0], lengths + [d[0]]
    assert np.all(np.diff(lengths) > -1e-12) and np.all(np.diff(lengths[:5]) > 0)
    assert np.isclose(lengths[-1], radius)
    assert x > 5 * 8 * 0.02 * 1.0  # the stale model alone would have gone 0.16-0.2


def test_mean_standard_error_is_the_weighted_sd_over_root_n():
    """Against numpy on the interval log-likelihoods of a tiny chain (padding has weight 0)."""
    import jax.numpy as jnp
    from conftest import make_tiny_bfdata
    from test_tuning import _intervals

    from birdflow.model import markov
    from birdflow.tuning import likelihood

    ds = make_tiny_bfdata(3, 4, n_weeks=6, seed=1)
    index = markov.WeekIndex.from_bfdata(ds)
    params = markov.st_init(ds, index, jnp.float32)
    batch = likelihood.make_batch(_intervals(ds, n=40, seed=0), index)
    ll = np.asarray(likelihood.interval_log_likelihoods(params, index, batch, batch.max_lag))
    w = np.asarray(batch.weight)
    x = ll[w > 0]
    assert np.all(w[w > 0] == 1) and len(x) > 10
    se = float(likelihood.mean_standard_error(params, index, batch, batch.max_lag))
    assert se == pytest.approx(x.std() / np.sqrt(len(x)), rel=1e-5)


def test_trials_reject_uphill_and_failed_steps_then_accept_downhill():
    """One outer step of the shared loop on the quadratic: a failed trial (NaN) and an overshoot
    are rejected and shrink the radius; the accepted trial lowers the loss (Armijo)."""
    s = descent.DescentSettings(radius=40.0, min_radius=1e-3, max_trials=8)
    x0, loss0 = np.zeros(3), quadratic(np.zeros(3))
    lo, hi, free = np.full(3, -100.0), np.full(3, 100.0), np.ones(3, bool)
    seen = []

    def evaluate(index, x):
        return (np.nan if index == 0 else quadratic(x)), {"index": index}

    def rejected(index, x, loss, fit, radius, shrunk):
        seen.append((index, loss, radius, shrunk))

    B = 100 * np.eye(3)  # a model that overshoots: the first finite trial goes uphill
    t, radius, why = descent.trials(B, g0, x0, loss0, s.radius, free, lo, hi, s, evaluate,
                                    rejected)
    assert why == "" and t is not None and t.index == len(seen) >= 2
    assert np.isnan(seen[0][1]) and seen[0][3] == 0.25 * seen[0][2]  # failed: a quarter
    assert all(shrunk < r for _, _, r, shrunk in seen)
    assert t.loss == quadratic(t.x) < loss0 + s.armijo * g0 @ t.s
    assert np.allclose(t.s, t.x - x0) and t.fit == {"index": t.index} and t.radius == radius


def test_trials_end_when_no_downhill_step_is_left_and_stop_counts_flat_steps():
    s = descent.DescentSettings(radius=1.0, min_radius=1e-3, max_trials=50, se_tol=0.01)
    lo, hi, free = np.full(3, -10.0), np.full(3, 10.0), np.ones(3, bool)
    uphill = lambda index, x: (quadratic(np.zeros(3)) + 1.0, None)  # noqa: E731
    t, radius, why = descent.trials(np.eye(3), g0, np.zeros(3), 0.0, s.radius, free, lo, hi, s,
                                    uphill, lambda *a: None)
    assert t is None and radius < s.min_radius and why.startswith("converged: no downhill")
    few = descent.DescentSettings(radius=1.0, max_trials=2)
    t, _, why = descent.trials(np.eye(3), g0, np.zeros(3), 0.0, 1.0, free, lo, hi, few, uphill,
                               lambda *a: None)
    assert t is None and why == "stopped: 2 rejected trials"

    stop = descent.Stop(s, loss_se=0.1)  # flat: |ΔL| <= 0.01 * 0.1 = 1e-3
    long_step = np.full(3, 0.1)  # beyond xtol, so only the flat rule can end it
    assert stop.after(1.0, 0.9995, long_step, 1) == ""
    assert stop.after(0.9995, 0.9, long_step, 2) == ""  # a real decrease resets the count
    assert [stop.after(0.9, 0.9 - 1e-4 * k, long_step, 2 + k) == "" for k in (1, 2)] == [True] * 2
    assert stop.after(0.9998, 0.9997, long_step, 5).startswith("converged: tuning loss changed "
                                                               "by less than 0.001")
    tiny = descent.Stop(s, loss_se=0.1)
    assert tiny.after(1.0, 1.0 - 1e-7, np.full(3, 1e-4), 7) == (
        "converged: tuning loss changed by 1e-07 and θ by 0.0001 in outer step 7")
