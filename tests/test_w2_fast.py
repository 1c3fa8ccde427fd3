"""Amortised Sinkhorn (``loss.w2.iterations_per_step``) and the online W2 cost
(``loss.w2.online_cost``) against the reference paths, float64 on a tiny grid."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata, w2_objective_steps

from birdflow.errors import ConfigError
from birdflow.losses import (
    LossConfig,
    W2Config,
    ground_cost,
    location,
    make_problem,
    online_cost,
)
from birdflow.model.markov import WeekIndex

# every full solve converges on this grid (epsilon 0.65 one-cell costs, threshold tight)
TIGHT = W2Config(epsilon_cells=0.65, threshold=1e-9, max_iterations=5000, online_cost=False)


@pytest.fixture(scope="module")
def tiny():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=5, seed=4, zero_frac=0.3)
    return ds, WeekIndex.from_bfdata(ds)


def _run(tiny, w2cfg: W2Config, steps, params=None):
    """Terms, flat gradient and loss state after calling the objective at each of ``steps``."""
    terms, g, state = w2_objective_steps(*tiny, w2cfg, steps, params)
    return terms, np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]), state


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_amortised_step_zero_is_the_full_solve(tiny):
    full = _run(tiny, TIGHT, steps=(0,))
    amort = _run(tiny, dataclasses.replace(TIGHT, iterations_per_step=2), steps=(0,))
    np.testing.assert_allclose(amort[0]["w2"], full[0]["w2"], rtol=1e-12)
    np.testing.assert_allclose(amort[1], full[1], rtol=1e-12, atol=1e-14)
    assert amort[0]["sinkhorn_iterations"] == full[0]["sinkhorn_iterations"] > 2


def test_amortised_potentials_converge_to_the_full_solve(tiny):
    """From a cold start (all steps amortised: steps 1, 2, ...) at fixed parameters, k = 5
    iterations per call converge to the tight solve: value and gradient equal, and the
    reported marginal error falls below the threshold; after one call they are not (the
    error_tolerance guard switched off: it would iterate the first call to below it)."""
    cfg = dataclasses.replace(TIGHT, iterations_per_step=5, error_tolerance=10.0)
    full = _run(tiny, TIGHT, steps=(0,))
    one = _run(tiny, cfg, steps=(1,))
    many = _run(tiny, cfg, steps=range(1, 81))
    assert one[0]["sinkhorn_error"] > 1e-3
    assert many[0]["sinkhorn_iterations"] == 5  # W(s, s) cached after step 1
    assert _rel(one[1], full[1]) > 1e-2  # 5 cold iterations: a biased gradient
    assert many[0]["sinkhorn_error"] < TIGHT.threshold
    np.testing.assert_allclose(many[0]["w2"], full[0]["w2"], rtol=1e-9)
    assert _rel(many[1], full[1]) < 1e-7
    # amortised steps do not count as unconverged (W(s, s), solved fully, converged)
    assert one[0]["n_unconverged"] == 0


def test_full_solve_every_runs_convergence_checked_solves(tiny):
    cfg = dataclasses.replace(TIGHT, iterations_per_step=1, full_solve_every=3)
    amort = _run(tiny, cfg, steps=(0, 1, 2))
    full_step = _run(tiny, cfg, steps=(0, 1, 2, 3))
    assert amort[0]["sinkhorn_iterations"] == 1
    assert full_step[0]["sinkhorn_iterations"] > 1 and full_step[0]["sinkhorn_error"] < 1e-9
    # a full solve that stops at max_iterations is counted; an amortised step only when it ends
    # above error_tolerance (10 here: never), W(s, s) always against the threshold
    capped = dataclasses.replace(cfg, max_iterations=10)
    assert _run(tiny, capped, steps=(0,))[0]["n_unconverged"] > 0
    assert _run(tiny, dataclasses.replace(capped, cache_target_self=False, error_tolerance=10.0),
                steps=(1,))[0]["n_unconverged"] == _w_ss_unconverged(tiny, capped)


def _w_ss_unconverged(tiny, cfg) -> int:
    """Week-solves of W(s, s) that stop at cfg.max_iterations (they always count)."""
    ds, index = tiny
    problem = make_problem(ds, index, LossConfig(location="w2", w2=cfg))
    with jax.enable_x64(True):
        slots = jnp.asarray(index.slot_cell[index.week_of_marginal()])
        cost = location.SlotCost(jnp.asarray(problem.w2_cell_cost, jnp.float64), slots)
        z = jnp.zeros((slots.shape[0], index.n_max))
        out = location.self_cost(jnp.asarray(problem.targets, jnp.float64), cost,
                                 cfg.epsilon_cells * float(problem.w2_unit),
                                 (z, z), threshold=cfg.threshold, max_iterations=cfg.max_iterations)
    return int((~out[4]).sum())


@pytest.mark.parametrize("cost", ["sqeuclidean", "dist_pow"])
def test_online_cost_equals_the_matrix_cost(tiny, cost, monkeypatch):
    """Same W2 values and gradients, with blocks smaller than a week (padding rows inside)."""
    monkeypatch.setattr(online_cost, "BLOCK_ROWS", 3)
    ref_cfg = dataclasses.replace(TIGHT, cost=cost)
    ref = _run(tiny, ref_cfg, steps=(0, 1))
    on = _run(tiny, dataclasses.replace(ref_cfg, online_cost=True), steps=(0, 1))
    assert on[2]["f"].shape == ref[2]["f"].shape
    for k in ("w2", "total", "sinkhorn_iterations"):
        np.testing.assert_allclose(on[0][k], ref[0][k], rtol=1e-10, err_msg=k)
    np.testing.assert_allclose(on[1], ref[1], rtol=1e-8, atol=1e-12 * np.abs(ref[1]).max())


@pytest.mark.parametrize("cost", ["sqeuclidean", "dist_pow"])
def test_online_geometry_reproduces_the_slot_cost(tiny, cost):
    ds, index = tiny
    assert online_cost.pad_slots is ground_cost.pad_slots  # one padding rule for both geometries
    m = make_problem(ds, index, LossConfig(location="w2", w2=W2Config(cost=cost, online_cost=False)))
    o = make_problem(ds, index, LossConfig(location="w2", w2=W2Config(cost=cost, online_cost=True)))
    assert o.w2_cell_cost.shape == (0, 0) and o.w2_points.shape == (ds.sizes["cell"], 2)
    assert m.w2_points is None
    np.testing.assert_allclose(o.w2_unit, m.w2_unit, rtol=1e-6)
    slots = index.slot_cell[index.week_of_marginal()]
    gathered = location.slot_cost(m.w2_cell_cost, slots)
    oc = online_cost.OnlineCost(o.w2_points, jnp.asarray(slots), o.w2_top, cost, 0.4)
    for t in range(slots.shape[0]):
        geom = oc.geometry(jnp.asarray(slots[t]), epsilon=0.1)
        np.testing.assert_allclose(geom.cost_matrix, gathered[t], rtol=1e-5, atol=1e-6)


def test_online_cost_auto_switches_on_large_grids():
    assert not online_cost.use_online("auto", online_cost.AUTO_CELLS)
    assert online_cost.use_online("auto", online_cost.AUTO_CELLS + 1)
    assert online_cost.use_online(True, 10) and not online_cost.use_online(False, 10**6)


@pytest.mark.parametrize("w2, key", [
    ({"iterations_per_step": 0}, "iterations_per_step"),
    ({"iterations_per_step": 2.5}, "iterations_per_step"),
    ({"iterations_per_step": "ten"}, "iterations_per_step"),
    ({"full_solve_every": -1}, "full_solve_every"),
    ({"online_cost": "yes"}, "online_cost"),
    ({"online_cost": True, "grad_mode": "implicit"}, "online_cost"),
])
def test_bad_amortised_or_online_keys_are_one_line_errors(w2, key):
    with pytest.raises(ConfigError, match=rf"loss\.w2\.{key}") as e:
        LossConfig.from_mapping({"location": "w2", "w2": w2})
    assert "\n" not in str(e.value)


def test_amortised_keys_parse_from_a_mapping():
    c = LossConfig.from_mapping({"location": "w2", "w2": {"iterations_per_step": 10.0,
                                                           "full_solve_every": 50}}).w2
    assert c.iterations_per_step == 10 and isinstance(c.iterations_per_step, int)
    assert LossConfig.from_mapping({"w2": {"iterations_per_step": None}}).w2.iterations_per_step is None
