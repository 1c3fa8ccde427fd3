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
