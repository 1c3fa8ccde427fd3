"""W2 never trains silently on unconverged Sinkhorn: epsilon in one-cell costs, cold solves
annealed, amortised steps held below ``error_tolerance``, implicit corrections bounded, a
stalled run stopped in one line, the evaluation's W2 counting only converged weeks.

Float64 on small strips (``birdflow.bench.blur.range_bfdata``); the full table over ranges
and blurs is ``python -m birdflow.bench.blur``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import w2_objective_steps

from birdflow.bench.blur import range_bfdata
from birdflow.errors import ConfigError
from birdflow.losses import LossConfig, W2Config, blur, location, make_problem
from birdflow.model.markov import WeekIndex, init_params

SMALL_EPS = 0.1  # one-cell costs: a blur of 0.3 cells, the table's hardest column
TIGHT = {"iterations_per_step": None, "threshold": 1e-10, "max_iterations": 50000}


@pytest.fixture(scope="module")
def strip():
    ds = range_bfdata(5, rows=3, weeks=3)
    return ds, WeekIndex.from_bfdata(ds)


def _flat(g) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _moved(index, scale=0.5):
    """Parameters p0, and p1 = p0 + a step of Adam's size: the warm start lags behind."""
    with jax.enable_x64(True):
        p0 = init_params(jax.random.key(1), index, dtype=jnp.float64)
        noise = jax.tree.map(lambda x: scale * jax.random.normal(jax.random.key(2), x.shape), p0)
        return p0, jax.tree.map(jnp.add, p0, noise)


def test_epsilon_is_in_one_cell_costs_and_the_old_key_says_what_replaced_it():
    """The same epsilon_cells is the same blur on a 5- and a 30-cell range (the old relative
    epsilon was 25x apart there); `loss.w2.epsilon` is refused in one line."""
    cfg = W2Config(epsilon_cells=2.0)
    for across in (5, 30):
        ds = range_bfdata(across, rows=3, weeks=2)
        unit = float(make_problem(ds, WeekIndex.from_bfdata(ds), LossConfig("w2", w2=cfg)).w2_unit)
        np.testing.assert_allclose(unit, 1.0 / ((across - 1) ** 2 + 2 ** 2), rtol=1e-9)
        np.testing.assert_allclose(float(blur.epsilon_at(cfg, unit, 0)), 2.0 * unit, rtol=1e-12)
    with pytest.raises(ConfigError, match=r"^loss\.w2\.epsilon: no longer used.*epsilon_cells") as e:
        LossConfig.from_mapping({"location": "w2", "w2": {"epsilon": 0.001}})
    assert "\n" not in str(e.value)
    assert LossConfig.from_mapping({"w2": {"epsilon_start": None}}).w2 == W2Config()


def test_cold_solve_anneals_to_a_blur_far_below_the_cell_cost():
    """At 0.1 one-cell costs on a 30-cell range a cold solve converges within 2,000 iterations
    by epsilon scaling (at the target from the start it stalls) and equals a tight solve."""
    ds = range_bfdata(30, rows=3, weeks=2)
    index = WeekIndex.from_bfdata(ds)
    problem = make_problem(ds, index, LossConfig("w2", w2=W2Config(grid_kernel=False)))
    with jax.enable_x64(True):
        slots = jnp.asarray(index.slot_cell[index.week_of_marginal()])
        cost = location.SlotCost(jnp.asarray(problem.w2_cell_cost, jnp.float64), slots)
        t = jnp.asarray(problem.targets, jnp.float64)
        mu = jnp.roll(t, 1, axis=0)  # week 2's S&T against week 1's
        eps = SMALL_EPS * float(problem.w2_unit)
        z = jnp.zeros_like(t)

        def solve(init, **kw):
            return location.w2(mu, t, cost, eps, init, grad_mode="danskin", **kw)

        cold = solve((z, z), threshold=1e-3, max_iterations=2000)
        tight = solve((z, z), threshold=1e-9, max_iterations=50000)
        # a warm start is never annealed: a tiny nonzero start shows the old, stalled solve
        stalled = solve((z + 1e-30, z), threshold=1e-3, max_iterations=2000)
    assert bool(cold.converged.all()) and int(cold.iterations.max()) < 2000
    assert not bool(stalled.converged.all())
    np.testing.assert_allclose(cold.values, tight.values, rtol=1e-2)


def test_amortised_step_iterates_past_its_budget_until_the_error_is_below_tolerance(strip):
    """Parameters moved after a full solve at a small blur: the amortised step runs past 10
    iterations, ends below error_tolerance, and its gradient is the full solve's."""
    ds, index = strip
    p0, p1 = _moved(index)
    amort = W2Config(epsilon_cells=SMALL_EPS)
    full = dataclasses.replace(amort, iterations_per_step=None)
    _, _, state = w2_objective_steps(ds, index, amort, (0,), p0)

    def step1(cfg, st):
        from birdflow.losses import objective
        with jax.enable_x64(True):
            prob = make_problem(ds, index, LossConfig("w2", w2=cfg))
            (_, (terms, _)), g = jax.value_and_grad(objective, has_aux=True)(
                p1, prob, index, LossConfig("w2", w2=cfg), st, 1)
        return {k: float(v) for k, v in terms.items()}, _flat(g)

    terms, g = step1(amort, state)
    terms_full, g_full = step1(full, state)
    assert terms["n_extended"] > 0 and terms["sinkhorn_iterations"] > amort.iterations_per_step
    assert terms["sinkhorn_error"] <= amort.error_tolerance and terms["n_unconverged"] == 0
    assert _rel(g, g_full) < 0.05  # both within the same tolerance of the converged gradient


def test_implicit_correction_is_used_only_below_the_tolerance(strip):
    """Far from convergence (one iteration from a moved warm start) the implicit mode falls
    back to the envelope gradient, counted, instead of a correction K^+ r orders of magnitude
    off; near convergence (error below the tolerance) it keeps its correction."""
    ds, index = strip
    p0, p1 = _moved(index)
    cfg = W2Config(epsilon_cells=SMALL_EPS, grad_mode="implicit", grid_kernel=False)
    _, _, state = w2_objective_steps(ds, index, cfg, (0,), p0)
    problem = make_problem(ds, index, LossConfig("w2", w2=cfg))
    with jax.enable_x64(True):
        from birdflow.model.markov import marginals
        mu, _ = marginals(p1, index)
        slots = jnp.asarray(index.slot_cell[index.week_of_marginal()])
        cost = location.SlotCost(jnp.asarray(problem.w2_cell_cost, jnp.float64), slots)
        t = jnp.asarray(problem.targets, jnp.float64)
        eps = SMALL_EPS * float(problem.w2_unit)
        init = (state["f"], state["g"])

        def grad(mode, tolerance, k, threshold=1e-3):
            def f(m):
                r = location.w2(m, t, cost, eps, init, grad_mode=mode, debiased=True,
                                fixed_iterations=k, tolerance=tolerance, threshold=threshold,
                                max_iterations=1 if k == 1 else 50000)
                return r.values.sum(), r
            (_, r), g = jax.value_and_grad(f, has_aux=True)(mu)
            return np.asarray(g), r

        g_tight, _ = grad("danskin", None, None, threshold=1e-11)
        g_far, far = grad("implicit", 1e-3, 1)  # one iteration: error far above 1e-3
        g_env, _ = grad("danskin", 1e-3, 1)
        g_near, near = grad("implicit", 1e-3, 10)  # iterated below the tolerance
        g_near_env, _ = grad("danskin", 1e-3, 10)
    n_mu = 2 * t.shape[0]
    assert float(far.errors[:n_mu].max()) > 1e-3
    assert int(far.fallback[:n_mu].sum()) == int((far.errors[:n_mu] > 1e-3).sum()) > 0
    np.testing.assert_allclose(g_far, g_env, rtol=1e-10, atol=1e-12)  # the envelope, exactly
    assert _rel(g_far, g_tight) < 10  # bounded: the same order as the tight gradient
    assert int(near.fallback.sum()) == 0 and float(near.errors[:n_mu].max()) <= 1e-3
    assert _rel(g_near, g_tight) < _rel(g_near_env, g_tight)  # the correction helps there


@pytest.mark.parametrize("eps_cells", [SMALL_EPS, 10.0])
def test_default_training_ends_at_the_full_solve_model(strip, eps_cells):
    """Two cells of `python -m birdflow.bench.blur`: 25 Adam steps of the default (amortised)
    W2 and of full solves reach the same parameters; the logged error stays below tolerance."""
    from birdflow.bench.blur import _train

    ds, index = strip
    out = {}
    with jax.enable_x64(True):
        for name, k in (("default", 10), ("full", None)):
            cfg = LossConfig("w2", w2=W2Config(epsilon_cells=eps_cells, iterations_per_step=k))
            state, hist, _, _ = _train(ds, index, cfg, 25, 0)
            out[name] = (_flat(state["params"]), hist)
    (p_d, h_d), (p_f, h_f) = out["default"], out["full"]
    assert max(h["sinkhorn_error"] for h in h_d[1:]) <= W2Config().error_tolerance
    assert sum(h["n_unconverged"] for h in h_d) == 0
    np.testing.assert_allclose(h_d[-1]["total"], h_f[-1]["total"], rtol=1e-3)
    assert _rel(p_d, p_f) < 1e-2
