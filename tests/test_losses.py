"""L2, distance and entropy terms, the L2 objective, and LossConfig validation."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata
from jax.test_util import check_grads
from omegaconf import OmegaConf

from birdflow.errors import ConfigError
from birdflow.losses import LossConfig, init_loss_state, make_problem, objective
from birdflow.losses.distance import distance_per_transition, transition_cost
from birdflow.losses.entropy import entropy, entropy_term
from birdflow.losses.location import l2
from birdflow.model.markov import WeekIndex, init_params, marginals

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def tiny():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=5, seed=2, zero_frac=0.3)
    return ds, WeekIndex.from_bfdata(ds)


def _params(index, seed=0):
    return init_params(jax.random.key(seed), index, dtype=jnp.float64)


def test_l2_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    mu, tg = rng.random((4, 6)), rng.random((4, 6))
    mu[:, 4:], tg[:, 4:] = 0.0, 0.0  # padding slots
    np.testing.assert_allclose(l2(mu, tg), ((mu - tg) ** 2).sum(1), rtol=1e-12)
    check_grads(lambda m: l2(m, jnp.asarray(tg)).sum(), (jnp.asarray(mu),), order=2)


def test_transition_cost_is_powered_distance_between_slot_cells(tiny):
    ds, index = tiny
    d = ds["distance_km"].values
    cost = transition_cost(d, index, 0.4)
    assert cost.shape == (index.n_transitions, index.n_max, index.n_max)
    for t in range(index.n_transitions):
        frm = index.slot_cell[t][index.valid[t]]
        to = index.slot_cell[t + 1][index.valid[t + 1]]
        np.testing.assert_allclose(cost[t, : len(frm), : len(to)],
                                   (d[np.ix_(frm, to)] / 100.0) ** 0.4, rtol=1e-12)
        assert np.all(cost[t, len(frm):] == 0) and np.all(cost[t, :, len(to):] == 0)


def test_distance_gradient(tiny):
    _, index = tiny
    rng = np.random.default_rng(1)
    M = jnp.asarray(rng.random((3, 4, 4)))
    C = jnp.asarray(rng.random((3, 4, 4)))
    np.testing.assert_allclose(distance_per_transition(M, C), (M * C).sum((1, 2)), rtol=1e-12)
    check_grads(lambda m: distance_per_transition(m, C).sum(), (M,), order=2)


def test_entropy_values_and_gradients():
    p = jnp.asarray([0.5, 0.25, 0.125, 0.125])
    np.testing.assert_allclose(entropy(p), 1.75 * np.log(2), rtol=1e-12)  # 1.75 bits
    check_grads(entropy, (p,), order=2, atol=1e-6, rtol=1e-6)
    # A zero entry adds nothing and its gradient stays finite (padding slots).
    padded = jnp.concatenate([p, jnp.zeros(3)])
    np.testing.assert_allclose(entropy(padded), entropy(p), rtol=1e-12)
    g = jax.grad(entropy)(padded)
    assert bool(jnp.isfinite(g).all()) and np.all(np.asarray(g[4:]) == 0)


def test_entropy_term_equals_conditional_entropy(tiny):
    """sum_t H(M_t) - sum_t H(mu_t) = sum_t sum_i mu_ti H(P_ti.) - H(mu_{T+1})."""
    _, index = tiny
    mu, M = marginals(_params(index), index)
    P = np.where(np.asarray(mu[:-1])[:, :, None] > 0,
                 np.asarray(M) / np.maximum(np.asarray(mu[:-1]), 1e-300)[:, :, None], 0.0)
    h_rows = -np.sum(np.where(P > 0, P * np.log(np.where(P > 0, P, 1.0)), 0.0), axis=2)
    expected = (np.asarray(mu[:-1]) * h_rows).sum() - float(entropy(mu[-1]))
    np.testing.assert_allclose(entropy_term(mu, M), expected, rtol=1e-10)


def test_l2_objective_gradients_finite_differences(tiny):
    ds, index = tiny
    cfg = LossConfig(ent_weight=0.05, dist_weight=0.02)
    problem = make_problem(ds, index, cfg)
    state = init_loss_state(problem, index, cfg)
    params = jax.tree.map(lambda x: 0.5 * x, _params(index, seed=3))

    def f(z0, Z):
        return objective({"z0": z0, "Z": Z}, problem, index, cfg, state, jnp.int32(0))[0]

    check_grads(f, (params["z0"], params["Z"]), order=1, modes=["rev"], atol=1e-6, rtol=1e-5)
    total, (terms, new_state) = objective(params, problem, index, cfg, state, jnp.int32(0))
    assert new_state == {}
    np.testing.assert_allclose(
        total, terms["obs"] + 0.02 * terms["dist"] - 0.05 * terms["ent"], rtol=1e-12)
    np.testing.assert_allclose(terms["obs"], terms["l2"], rtol=0)


def test_objective_gradient_finite_with_saturated_logits(tiny):
    """Huge logits drive some probabilities to exactly 0: no NaN anywhere."""
    ds, index = tiny
    cfg = LossConfig()
    problem = make_problem(ds, index, cfg)
    params = jax.tree.map(lambda x: 400.0 * x, _params(index, seed=4))
    (_, (terms, _)), g = jax.value_and_grad(objective, has_aux=True)(
        params, problem, index, cfg, {}, jnp.int32(0))
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(g))
    assert all(bool(jnp.isfinite(v)) for v in terms.values())


def test_problem_targets_are_slot_layout_distributions(tiny):
    ds, index = tiny
    problem = make_problem(ds, index, LossConfig())
    np.testing.assert_allclose(problem.targets.sum(1), 1.0, atol=1e-12)
    assert problem.dist_cost.shape == (index.n_transitions, index.n_max, index.n_max)
    assert problem.w2_cell_cost.shape == (0, 0)


@pytest.mark.parametrize("name", ["l2", "w2"])
def test_yaml_files_build_configs(name):
    cfg = LossConfig.from_mapping(OmegaConf.load(CONF / f"{name}.yaml"))
    assert cfg.location == name
    weights = (cfg.obs_weight, cfg.dist_weight, cfg.ent_weight, cfg.dist_pow)
    if name == "l2":  # birdflow's defaults: L2 per effective cell (README "Loss weights")
        assert weights == (1.0, 0.03, 0.03, 1.0) and cfg.l2_norm == "cells"
    else:  # W2 keeps BirdFlowPy's weights
        assert weights == (1.0, 0.01, 1e-4, 0.4)
    assert cfg.w2 == LossConfig().w2  # the YAML spells out the dataclass defaults
    hash(cfg)  # static argument for jit


@pytest.mark.parametrize(("override", "key"), [
    ({"dist_weight": -1.0}, "loss.dist_weight"),
    ({"ent_weight": -1e-4}, "loss.ent_weight"),
    ({"w2": {"epsilon_cells": 0.0}}, "loss.w2.epsilon_cells"),
    ({"w2": {"epsilon_cells": -0.1}}, "loss.w2.epsilon_cells"),
    ({"w2": {"epsilon": 0.001}}, "loss.w2.epsilon"),  # retired: it was relative to the largest cost
    ({"location": "l1"}, "loss.location"),
    ({"w2": {"grad_mode": "backprop"}}, "loss.w2.grad_mode"),
    ({"w2": {"cost": "manhattan"}}, "loss.w2.cost"),
    ({"w2": {"threshold": 0}}, "loss.w2.threshold"),
    ({"w2": {"max_iterations": 0}}, "loss.w2.max_iterations"),
    ({"w2": {"epsilon_cells_start": -1.0}}, "loss.w2.epsilon_cells_start"),
    ({"w2": {"error_tolerance": 0}}, "loss.w2.error_tolerance"),
    ({"obs_wieght": 1.0}, "loss.obs_wieght"),
    ({"obs_weight": "heavy"}, "loss.obs_weight"),
    ({"w2": {"warm_start": "yes"}}, "loss.w2.warm_start"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        LossConfig.from_mapping(override)
    msg = str(err.value)
    assert msg.startswith(key + ":") and "\n" not in msg


def test_files_without_a_distance_matrix_train_on_distances_from_coordinates(monkeypatch, tmp_path):
    """Above DISTANCE_MATRIX_MAX_CELLS BirdFlowData holds no distance_km (n^2): it round-trips
    through NetCDF and the dense distance cost is the same, computed from the coordinates."""
    from birdflow.data import bfdata

    ref = make_tiny_bfdata()
    monkeypatch.setattr(bfdata, "DISTANCE_MATRIX_MAX_CELLS", 3)
    lean = make_tiny_bfdata()
    assert "distance_km" in ref and "distance_km" not in lean
    back = bfdata.load_bfdata(bfdata.save_bfdata(lean, tmp_path / "lean.nc"))
    assert "distance_km" not in back
    index = WeekIndex.from_bfdata(ref)
    cfg = LossConfig()
    np.testing.assert_allclose(make_problem(back, index, cfg).dist_cost,
                               make_problem(ref, index, cfg).dist_cost, rtol=1e-6)
