"""W2 never trains silently on unconverged Sinkhorn: epsilon in one-cell costs, cold solves
annealed, amortised steps held below ``error_tolerance``, implicit corrections bounded, a
stalled run stopped in one line, the evaluation's W2 counting only converged weeks.

Float64 on small strips (``birdflow.bench.blur.range_bfdata``); the full table over ranges
and blurs is ``python -m birdflow.bench.blur``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import w2_objective_steps

from birdflow.bench.blur import range_bfdata
from birdflow.errors import ConfigError
from birdflow.losses import LossConfig, W2Config, blur, location, make_problem
from birdflow.model.markov import WeekIndex, init_params, marginals

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
        np.testing.assert_allclose(unit, 1.0 / ((across - 1) ** 2 + 2 ** 2), rtol=1e-6)
        np.testing.assert_allclose(float(blur.epsilon_at(cfg, unit, 0)), 2.0 * unit, rtol=1e-6)
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


def test_implicit_correction_is_used_only_below_the_tolerance(strip):
    """Far from convergence (one iteration from a moved warm start) the implicit mode falls
    back to the envelope gradient, counted, instead of a correction K^+ r that grows without
    bound with the error; near convergence (error below the tolerance) it keeps it."""
    ds, index = strip
    p0, p1 = _moved(index)
    cfg = W2Config(epsilon_cells=SMALL_EPS, grid_kernel=False)  # slot-layout potentials
    _, _, state = w2_objective_steps(ds, index, cfg, (0,), p0)
    problem = make_problem(ds, index, LossConfig("w2", w2=cfg))
    with jax.enable_x64(True):
        mu, _ = marginals(p1, index)
        slots = jnp.asarray(index.slot_cell[index.week_of_marginal()])
        cost = location.SlotCost(jnp.asarray(problem.w2_cell_cost, jnp.float64), slots)
        t = jnp.asarray(problem.targets, jnp.float64)
        eps = SMALL_EPS * float(problem.w2_unit)
        init = (state["f"][:t.shape[0]], state["g"][:t.shape[0]])  # the W(mu, s) potentials

        def grad(mode, k, max_iterations):
            def f(m):
                r = location.w2(m, t, cost, eps, init, grad_mode=mode, debiased=False,
                                fixed_iterations=k, tolerance=1e-3, max_iterations=max_iterations)
                return r.values.sum(), r
            (_, r), g = jax.value_and_grad(f, has_aux=True)(mu)
            return np.asarray(g) - np.asarray(g).mean(axis=1, keepdims=True), r  # centred

        g_far, far = grad("implicit", 1, 1)  # one iteration: the error is far above 1e-3
        g_env, _ = grad("danskin", 1, 1)
        g_near, near = grad("implicit", 10, 5000)  # iterated (guard) to below it
    fb = np.asarray(far.fallback)
    assert (fb == (np.asarray(far.errors) > 1e-3)).all() and fb.any()
    np.testing.assert_allclose(g_far[fb], g_env[fb], atol=1e-9 * np.abs(g_env).max())  # envelope
    assert int(near.fallback.sum()) == 0 and float(near.errors.max()) <= 1e-3  # corrected
    assert np.isfinite(g_near).all()


def test_default_training_ends_at_the_full_solve_model(strip):
    """The hardest column of `python -m birdflow.bench.blur` (0.1 one-cell costs, 5-cell range):
    25 Adam steps of the default (amortised) W2 iterate past their budget, log errors below the
    tolerance and reach the full-solve run's parameters."""
    from birdflow.bench.blur import _train

    ds, index = strip
    out = {}
    with jax.enable_x64(True):
        for name, k in (("default", 10), ("full", None)):
            cfg = LossConfig("w2", w2=W2Config(epsilon_cells=SMALL_EPS, iterations_per_step=k))
            state, hist, _, _ = _train(ds, index, cfg, 25, 0)
            out[name] = (_flat(state["params"]), hist)
    (p_d, h_d), (p_f, h_f) = out["default"], out["full"]
    assert max(h["sinkhorn_error"] for h in h_d[1:]) <= W2Config().error_tolerance
    assert sum(h["n_unconverged"] for h in h_d) == 0 and sum(h["n_extended"] > 0 for h in h_d) > 10
    np.testing.assert_allclose(h_d[-1]["total"], h_f[-1]["total"], rtol=1e-3)
    assert _rel(p_d, p_f) < 1e-2


def test_a_deliberately_tiny_epsilon_stops_the_run_in_one_line(tmp_path, monkeypatch):
    """epsilon 1e-4 one-cell costs with 50 iterations: every step unconverged, warned, and the
    run stops after PERSISTENT_STEPS of them (birdflow train: status 2) naming the fix."""
    import json

    from conftest import make_tiny_bfdata

    from birdflow.app import compose
    from birdflow.training import loop

    monkeypatch.setattr(loop, "PERSISTENT_STEPS", 3)
    cfg = compose("train", [f"run_dir={tmp_path}", "progress=false", "tensorboard=false",
                            "evaluate=false", "maps=false", "optim.steps=10", "loss=w2",
                            "loss.w2.epsilon_cells=1e-4", "loss.w2.max_iterations=50"])
    with pytest.raises(loop.SinkhornNotConverged) as e:
        loop.train(cfg, data=make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=4, seed=3))
    msg = str(e.value)
    assert msg.startswith("step 2: ") and "\n" not in msg and "3 steps in a row" in msg
    assert "loss.w2.epsilon_cells=0.0001" in msg and "one-cell cost 0.0769" in msg
    assert "raise loss.w2.epsilon_cells" in msg
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "stopped" and info["reason"] == msg


def test_evaluation_w2_summary_counts_only_converged_weeks_and_says_how_far_the_others_are():
    from birdflow.evaluation import metrics

    fit = {"w2": np.array([10.0, 30.0, 500.0]), "w2_converged": np.array([True, True, False]),
           "w2_error": np.array([2e-4, 9e-4, 0.4]), "w2_epsilon": 1e-4}
    assert metrics.w2_summary(fit) == {"mean_w2": 20.0, "max_w2": 30.0, "n_w2_unconverged": 1,
                                       "max_w2_error": 0.4, "w2_epsilon": 1e-4}
    fit["w2_converged"][:] = False
    assert metrics.w2_summary(fit)["mean_w2"] is None
