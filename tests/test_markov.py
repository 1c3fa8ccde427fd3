"""Invariants of the slot-layout Markov chain (birdflow.model.markov) for random parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from birdflow.model.markov import (
    WeekIndex,
    init_params,
    initial_distr,
    marginals,
    project,
    transitions,
)


def _random_index(seed: int = 0, n_weeks: int = 6, n_cells: int = 7, cyclic: bool = True):
    rng = np.random.default_rng(seed)
    dm = rng.random((n_weeks, n_cells)) < 0.7
    dm[:, 0] = True  # every week keeps at least one cell
    return WeekIndex.from_dynamic_mask(dm, cyclic=cyclic)


@pytest.fixture(params=[True, False], ids=["cyclic", "truncated"])
def index(request):
    return _random_index(cyclic=request.param)


def _params(index, seed=1, scale=2.0):
    p = init_params(jax.random.key(seed), index, dtype=jnp.float64)
    return jax.tree.map(lambda x: scale * x, p)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_marginal_shapes_and_sums(index):
    mu, M = marginals(_params(index), index)
    assert mu.shape == (index.n_transitions + 1, index.n_max)
    assert M.shape == (index.n_transitions, index.n_max, index.n_max)
    np.testing.assert_allclose(mu.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(M.sum(axis=(1, 2)), 1.0, atol=1e-12)
    assert float(mu.min()) >= 0.0 and float(M.min()) >= 0.0


def test_rows_and_columns_of_joints_are_the_one_way_marginals(index):
    mu, M = marginals(_params(index), index)
    np.testing.assert_allclose(M.sum(axis=2), mu[:-1], atol=1e-12)
    np.testing.assert_allclose(M.sum(axis=1), mu[1:], atol=1e-12)


def test_no_mass_outside_dynamic_masks(index):
    mu, M = marginals(_params(index), index)
    valid = index.valid[index.week_of_marginal()]
    assert np.all(np.asarray(mu)[~valid] == 0.0)
    t = np.arange(index.n_transitions)
    vf, vt = index.valid[t], index.valid[(t + 1) % index.n_weeks]
    outside = ~(vf[:, :, None] & vt[:, None, :])
    assert np.all(np.asarray(M)[outside] == 0.0)
    P = transitions(_params(index), index)
    np.testing.assert_allclose(np.asarray(P).sum(axis=2), vf.astype(float), atol=1e-12)


def test_marginals_gradients_match_finite_differences():
    index = _random_index(seed=3, n_weeks=4, n_cells=5)
    params = _params(index, scale=0.5)

    def f(z0, Z):
        mu, M = marginals({"z0": z0, "Z": Z}, index)
        w = jnp.linspace(0.5, 1.5, mu.size).reshape(mu.shape)
        return jnp.sum(w * mu) + jnp.sum(jnp.sin(M))  # generic smooth readout

    check_grads(f, (params["z0"], params["Z"]), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    grads = jax.grad(f, argnums=(0, 1))(params["z0"], params["Z"])
    assert all(bool(jnp.isfinite(g).all()) for g in grads)


def test_project_equals_repeated_matmul(index):
    params = _params(index)
    P = transitions(params, index)
    mu, _ = marginals(params, index)
    n_steps = index.n_transitions + 2  # wraps around for cyclic models
    if not index.cyclic:
        n_steps = index.n_transitions
    seq = project(initial_distr(params, index), P, 0, n_steps)
    d = np.asarray(initial_distr(params, index))
    for k in range(n_steps + 1):
        np.testing.assert_allclose(seq[k], d, atol=1e-12)
        if k < n_steps:
            d = d @ np.asarray(P[k % P.shape[0]])
    np.testing.assert_allclose(seq[: index.n_transitions + 1], mu, atol=1e-12)


def test_project_from_a_later_week():
    index = _random_index(seed=5)
    params = _params(index)
    P = transitions(params, index)
    mu, _ = marginals(params, index)
    seq = project(mu[2], P, 2, 3)
    np.testing.assert_allclose(seq, mu[2:6], atol=1e-12)
