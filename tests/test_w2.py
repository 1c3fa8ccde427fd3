"""Entropic W2 location loss: padding, gradient modes vs finite differences, warm start."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn
from scipy.optimize import linprog

from birdflow.losses import LossConfig, W2Config, init_loss_state, make_problem, objective
from birdflow.losses.location import cell_cost, slot_cost, w2
from birdflow.losses.objective import epsilon_at
from birdflow.model.markov import WeekIndex, init_params

EPS = 0.05  # relative to the largest cost; large enough for a 12-cell toy grid to converge fast


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _line_grid(n_cells: int = 8):
    """Cells on a line, unit spacing; cost normalised to max 1 (as cell_cost does)."""
    x = np.arange(n_cells, dtype=float)
    return (x[:, None] - x[None, :]) ** 2 / (n_cells - 1) ** 2


def _toy(seed=0, n_weeks=3, n_cells=8):
    """Random masks (some cells outside each week's mask), mu and targets in slot layout."""
    rng = np.random.default_rng(seed)
    dm = rng.random((n_weeks, n_cells)) < 0.7
    dm[:, :2] = True
    index = WeekIndex.from_dynamic_mask(dm, cyclic=False, n_max=n_cells)  # shared shapes
    valid = index.valid[index.week_of_marginal()]
    mu = np.where(valid, rng.random(valid.shape) + 0.1, 0.0)
    tg = np.where(valid, rng.random(valid.shape) + 0.1, 0.0)
    mu, tg = mu / mu.sum(1, keepdims=True), tg / tg.sum(1, keepdims=True)
    cost = slot_cost(jnp.asarray(_line_grid(n_cells)), index.slot_cell[index.week_of_marginal()])
    return index, jnp.asarray(mu), jnp.asarray(tg), cost


@partial(jax.jit, static_argnames=("grad_mode", "debiased", "eps", "threshold"))
def _solve(mu, tg, cost, grad_mode="implicit", debiased=False, eps=EPS, threshold=1e-9):
    k = 3 if debiased else 1
    init = (jnp.zeros((k * mu.shape[0], mu.shape[1])),) * 2
    return w2(mu, tg, cost, eps, init, threshold=threshold, max_iterations=3000,
              grad_mode=grad_mode, debiased=debiased)


def _w2_sum(*args, **kw):
    """Per-week W2 values (differentiable); convergence is asserted by _converged_w2."""
    return _solve(*args, **kw)[0]


@partial(jax.jit, static_argnames=("grad_mode", "debiased", "eps", "threshold"))
def _grad_w2(mu, tg, cost, grad_mode="implicit", debiased=False, eps=EPS, threshold=1e-9):
    """Gradient of the summed weekly W2 with respect to mu."""
    return jax.grad(lambda m: _w2_sum(m, tg, cost, grad_mode, debiased, eps, threshold).sum())(mu)


def _converged_w2(*args, **kw):
    res = _solve(*args, **kw)
    assert bool(res.converged.all())
    return res.values


def test_padding_does_not_change_the_solution():
    """Padded batched solve == unpadded per-week OTT solve (value and gradient)."""
    index, mu, tg, cost = _toy(seed=1)
    C = _line_grid()
    vals = _converged_w2(mu, tg, cost)
    g = _grad_w2(mu, tg, cost)
    solver = sinkhorn.Sinkhorn(threshold=1e-9, max_iterations=20000)
    for t in range(mu.shape[0]):
        cells = index.slot_cell[t][index.valid[t]]
        n = len(cells)

        def one(a, t=t, cells=cells, n=n):
            geom = geometry.Geometry(cost_matrix=jnp.asarray(C[np.ix_(cells, cells)]), epsilon=EPS)
            return solver(linear_problem.LinearProblem(geom, a, tg[t, :n])).reg_ot_cost

        ref, ref_g = jax.value_and_grad(one)(mu[t, :n])
        np.testing.assert_allclose(vals[t], ref, rtol=1e-7, atol=1e-9)
        gt = np.asarray(g[t, :n])
        np.testing.assert_allclose(gt - gt.mean(), ref_g - ref_g.mean(), atol=1e-6)


@pytest.mark.parametrize("debiased", [False, True], ids=["regularised", "debiased"])
def test_gradient_modes_agree_with_centred_finite_differences(debiased):
    index, mu, tg, cost = _toy(seed=2)
    valid = jnp.asarray(index.valid[index.week_of_marginal()])
    rng = np.random.default_rng(7)
    # A direction on the simplex of each week: zero-mean over that week's real cells.
    d = np.where(valid, rng.normal(size=mu.shape), 0.0)
    d = jnp.asarray(np.where(valid, d - d.sum(1, keepdims=True) / valid.sum(1, keepdims=True), 0.0))

    def f(m, mode):
        return _w2_sum(m, tg, cost, mode, debiased).sum()

    _converged_w2(mu, tg, cost, "implicit", debiased)
    h = 1e-5
    fd = (f(mu + h * d, "implicit") - f(mu - h * d, "implicit")) / (2 * h)
    grads = {mode: _grad_w2(mu, tg, cost, mode, debiased) for mode in ("implicit", "danskin", "unroll")}
    for mode, g in grads.items():
        assert bool(jnp.isfinite(g).all()), mode
        np.testing.assert_allclose(jnp.sum(g * d), fd, rtol=1e-5, err_msg=mode)
    for t in range(mu.shape[0]):  # per week, equal up to a constant on the real cells
        v = index.valid[t]
        ref = np.asarray(grads["implicit"][t][v])
        for mode in ("danskin", "unroll"):
            other = np.asarray(grads[mode][t][v])
            np.testing.assert_allclose(other - other.mean(), ref - ref.mean(), atol=1e-6)


def test_gradients_finite_with_near_zero_and_zero_mass():
    """mu with exact zeros and 1e-30 on real cells, padding in every week: no NaN."""
    index, mu, tg, cost = _toy(seed=3)
    valid = index.valid[index.week_of_marginal()]
    mu = np.asarray(mu).copy()
    first = np.argmax(valid, axis=1)
    mu[np.arange(len(mu)), first] = 0.0
    mu[np.arange(len(mu)), first + 1] = 1e-30
    mu = jnp.asarray(mu / mu.sum(1, keepdims=True))
    for mode in ("implicit", "danskin", "unroll"):
        for debiased in (False, True):
            g = _grad_w2(mu, tg, cost, mode, debiased)  # compiled by the test above
            assert bool(jnp.isfinite(g).all()), (mode, debiased)


def test_debiased_identical_is_zero_and_grows_with_shift():
    n = 12
    C = jnp.asarray(_line_grid(n))
    index = WeekIndex.from_dynamic_mask(np.ones((1, n), bool), cyclic=False)
    cost = slot_cost(C, index.slot_cell)
    def blob(centre):
        b = np.exp(-0.5 * ((np.arange(n) - centre) / 1.5) ** 2)
        return jnp.asarray(b / b.sum())[None]

    base = blob(3.0)
    same = _converged_w2(base, base, cost, debiased=True, eps=0.01, threshold=1e-6)
    assert abs(float(same[0])) < 1e-10
    raw_same = _w2_sum(base, base, cost, debiased=False, eps=0.01, threshold=1e-6)
    assert float(raw_same[0]) > 1e-3  # the entropic bias that debiasing removes
    values = []
    for shift in range(1, 6):
        moved = blob(3.0 + shift)
        values.append(float(_converged_w2(moved, base, cost, debiased=True, eps=0.01, threshold=1e-6)[0]))
    assert np.all(np.diff(values) > 0), values
    # Close to the exact (unregularised) OT cost from a linear program; the divergence is
    # smoothed over ~sqrt(eps) = 0.1 of the line, so allow 10 %.
    exact = [_exact_ot(np.asarray(blob(3.0 + s)[0]), np.asarray(base[0]), np.asarray(C))
             for s in range(1, 6)]
    np.testing.assert_allclose(values, exact, rtol=0.1)


def _exact_ot(a, b, C):
    n, m = C.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))
    cols = np.kron(np.ones((1, n)), np.eye(m))
    res = linprog(C.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.r_[a, b], bounds=(0, None),
                  method="highs")
    assert res.status == 0
    return res.fun


def test_cell_cost_normalisation():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=5, seed=2)
    args = (ds["cell_x"].values, ds["cell_y"].values, ds["cell_lon"].values, ds["cell_lat"].values)
    sq = cell_cost(*args)
    dx = (ds["cell_x"].values[:, None] - ds["cell_x"].values[None]) ** 2
    dy = (ds["cell_y"].values[:, None] - ds["cell_y"].values[None]) ** 2
    np.testing.assert_allclose(sq, (dx + dy) / (dx + dy).max(), rtol=1e-12)
    dp = cell_cost(*args, cost="dist_pow", cost_pow=0.4)
    d = (ds["distance_km"].values / 100.0) ** 0.4
    np.testing.assert_allclose(dp, d / d.max(), rtol=1e-9)


def test_w2_objective_warm_start_and_schedule():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=6, seed=5)
    index = WeekIndex.from_bfdata(ds)
    w2cfg = W2Config(debiased=False, epsilon_cells=0.26, epsilon_cells_start=2.6, epsilon_decay_steps=10,
                     threshold=1e-6,
                     max_iterations=5000, iterations_per_step=None)
    cfg = LossConfig(location="w2", w2=w2cfg)
    problem = make_problem(ds, index, cfg)
    params = init_params(jax.random.key(0), index, dtype=jnp.float64)
    vg = jax.jit(jax.value_and_grad(
        lambda p, s, k: objective(p, problem, index, cfg, s, k), has_aux=True))
    state = init_loss_state(problem, index, cfg)
    (_, (cold, state)), g = vg(params, state, jnp.int32(10))
    (_, (warm, _)), g_warm = vg(params, state, jnp.int32(10))
    assert int(warm["sinkhorn_iterations"]) < int(cold["sinkhorn_iterations"])
    np.testing.assert_allclose(warm["w2"], cold["w2"], rtol=1e-5)
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves((g, g_warm)))
    assert set(cold) >= {"total", "obs", "dist", "ent", "l2", "w2", "sinkhorn_iterations"}
    np.testing.assert_allclose(cold["obs"], w2cfg.scale * cold["w2"], rtol=1e-12)
    unit = float(problem.w2_unit)  # one-cell cost: epsilon_cells 0.26 is 0.02 of the largest cost
    np.testing.assert_allclose(unit, 1 / 13, rtol=1e-12)
    np.testing.assert_allclose(epsilon_at(w2cfg, 0, unit), 0.2, rtol=1e-12)
    np.testing.assert_allclose(epsilon_at(w2cfg, 5, unit), np.sqrt(0.2 * 0.02), rtol=1e-12)
    np.testing.assert_allclose(epsilon_at(w2cfg, 50, unit), 0.02, rtol=1e-12)
    np.testing.assert_allclose(cold["epsilon"], 0.02, rtol=1e-12)
