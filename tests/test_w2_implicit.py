"""W2 ``grad_mode: implicit``: every term differentiated through the optimality conditions.

References: OTT's own ``ImplicitDiff(use_danskin=False)`` (an independent implementation of
the same derivative, float64, where it works) and centred finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn
from test_w2 import _toy

from birdflow.losses.location import _floor, w2

EPS = 0.05
LOOSE = 1e-1  # far from convergence: implicit and envelope gradients differ visibly here


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _ours(mu, tg, cost, mode, debiased, threshold, week_batch=0, linear_solve="cg"):
    k = 3 if debiased else 1
    init = (jnp.zeros((k * mu.shape[0], mu.shape[1])),) * 2
    return w2(mu, tg, cost, EPS, init, threshold=threshold, max_iterations=3000, grad_mode=mode,
              debiased=debiased, week_batch=week_batch, linear_solve=linear_solve)[0].sum()


def _ott_implicit(mu, tg, cost, debiased, threshold):
    """The same loss from OTT solves with ImplicitDiff (use_danskin=False), week by week."""
    a, b = _floor(mu), jax.lax.stop_gradient(_floor(tg))
    solver = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=3000, use_danskin=False,
                               implicit_diff=implicit_differentiation.ImplicitDiff())

    def ot(t, x, y):
        geom = geometry.Geometry(cost_matrix=cost[t], epsilon=EPS)
        return solver(linear_problem.LinearProblem(geom, x, y)).reg_ot_cost

    total = 0.0
    for t in range(mu.shape[0]):
        total += ot(t, a[t], b[t])
        if debiased:
            total -= 0.5 * ot(t, a[t], a[t]) + 0.5 * jax.lax.stop_gradient(ot(t, b[t], b[t]))
    return total


def _centred(g, valid):
    g = np.asarray(g)
    mean = (g * valid).sum(1, keepdims=True) / valid.sum(1, keepdims=True)
    return np.where(valid, g - mean, 0.0)


@pytest.mark.parametrize("linear_solve", ["cg", "direct"])
@pytest.mark.parametrize("debiased", [False, True], ids=["regularised", "debiased"])
def test_implicit_gradient_equals_otts_implicit_diff_before_convergence(debiased, linear_solve):
    """At threshold 0.1 the implicit gradient (W(mu, mu) included) is OTT's IFT gradient,
    and measurably not the envelope gradient; with either linear solve."""
    index, mu, tg, cost = _toy(seed=1)
    valid = np.asarray(mu) > 0
    ours = jax.grad(lambda m: _ours(m, tg, cost, "implicit", debiased, LOOSE,
                                    linear_solve=linear_solve))(mu)
    danskin = jax.grad(lambda m: _ours(m, tg, cost, "danskin", debiased, LOOSE))(mu)
    ref = jax.grad(lambda m: _ott_implicit(m, tg, cost, debiased, LOOSE))(mu)
    np.testing.assert_allclose(_ours(mu, tg, cost, "implicit", debiased, LOOSE),
                               _ott_implicit(mu, tg, cost, debiased, LOOSE), rtol=1e-12)
    scale = np.abs(_centred(ref, valid)).max()
    np.testing.assert_allclose(_centred(ours, valid), _centred(ref, valid), atol=1e-5 * scale)
    assert np.abs(_centred(danskin, valid) - _centred(ref, valid)).max() > 1e-3


@pytest.mark.parametrize("linear_solve", ["cg", "direct"])
def test_hessian_vector_product_matches_finite_differences_of_the_gradient(linear_solve):
    """jax.jvp of jax.grad of the debiased W2 (all weeks in one vmap) vs centred FD; and the
    same product from jax.linearize (the tuner's Hessian: the implicit rules partially
    evaluated once, the linear part reused); with either linear solve."""
    index, mu, tg, cost = _toy(seed=2)
    valid = np.asarray(mu) > 0
    v = jnp.asarray(np.where(valid, np.random.default_rng(3).normal(size=mu.shape), 0.0))

    def grad(m):
        return jax.grad(lambda x: _ours(x, tg, cost, "implicit", True, 1e-12,
                                        linear_solve=linear_solve))(m)

    hvp = jax.jvp(grad, (mu,), (v,))[1]
    h = 1e-5
    fd = (grad(mu + h * v) - grad(mu - h * v)) / (2 * h)
    scale = np.abs(np.asarray(fd)[valid]).max()
    np.testing.assert_allclose(np.asarray(hvp)[valid], np.asarray(fd)[valid], atol=1e-5 * scale)
    lin = jax.linearize(grad, mu)[1]
    np.testing.assert_allclose(np.asarray(lin(v)), np.asarray(hvp), rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(np.asarray(lin(2 * v)), 2 * np.asarray(hvp), rtol=1e-10,
                               atol=1e-12 * scale)


def test_failed_linear_solve_falls_back_to_the_envelope_gradient_and_says_so():
    """A CG capped at 1 step fails: the week gets OTT's envelope gradient and fallback=True."""
    from birdflow.losses import sinkhorn_implicit
    from birdflow.losses.location import _dense_geom, _solver

    index, mu, tg, cost = _toy(seed=1)
    a, b = _floor(mu)[0], _floor(tg)[0]
    valid, z = np.asarray(mu[0]) > 0, jnp.zeros_like(a)
    inner = _solver(LOOSE, 3000, "danskin")

    def value(x, max_steps):
        settings = sinkhorn_implicit.SolveSettings(inner, max_steps=max_steps)
        return sinkhorn_implicit.reg_ot(settings, _dense_geom, x, b, (cost[0],), valid, EPS, z, z)

    def fallback(max_steps):  # only computed when a derivative is taken
        return bool(jax.jvp(lambda x: value(x, max_steps), (a,), (jnp.zeros_like(a),))[0][5] > 0.5)

    assert fallback(1) and not fallback(1000)
    g_fail = jax.grad(lambda x: value(x, 1)[0])(a)
    g_ok = jax.grad(lambda x: value(x, 1000)[0])(a)
    geom = geometry.Geometry(cost_matrix=cost[0], epsilon=EPS)
    envelope = jax.grad(lambda x: inner(linear_problem.LinearProblem(geom, x, b)).reg_ot_cost)(a)
    envelope = envelope + EPS * (jnp.log(a) + 1.0)  # OTT's value adds -eps H(a); ours outside
    c = lambda g: _centred(g[None], valid[None])  # noqa: E731
    np.testing.assert_allclose(c(g_fail), c(envelope), atol=1e-10)
    assert np.abs(c(g_ok) - c(g_fail)).max() > 1e-4


@pytest.mark.slow
def test_implicit_mode_at_a_thousand_cells_in_float32():
    """n ~ 1000 per week, float32, default settings otherwise: finite, no fallback, close to
    the envelope gradient (they differ only by the threshold's marginal error)."""
    from birdflow.bench.core import synthetic_bfdata
    from birdflow.losses.objective import (
        LossConfig,
        W2Config,
        init_loss_state,
        make_problem,
        objective,
    )
    from birdflow.model.markov import WeekIndex, init_params

    with jax.enable_x64(False):
        ds = synthetic_bfdata(1000)
        index = WeekIndex.from_bfdata(ds)
        assert index.n_max >= 1000
        params = init_params(jax.random.key(0), index)
        grads = {}
        for mode in ("danskin", "implicit"):
            cfg = LossConfig(location="w2", w2=W2Config(grad_mode=mode))
            problem = make_problem(ds, index, cfg)
            vg = jax.jit(jax.value_and_grad(
                lambda p, s, cfg=cfg, problem=problem: objective(p, problem, index, cfg, s, 0),
                has_aux=True))
            (_, (terms, _)), g = vg(params, init_loss_state(problem, index, cfg))
            grads[mode] = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
            assert int(terms["n_fallback"]) == 0 and int(terms["n_unconverged"]) == 0, mode
            assert bool(jnp.isfinite(grads[mode]).all()), mode
    gi, gd = grads["implicit"], grads["danskin"]
    rel = float(jnp.linalg.norm(gi - gd) / jnp.linalg.norm(gd))
    assert 0 < rel < 1e-2, rel
