"""Tuning on the sparse (neighbourhood) layout: likelihood, S&T start, gauge, hypergradient, tune.

The reference is the dense layout: with a radius that holds every cell the sparse tuning
problem is the dense one written differently, so the interval log-likelihoods, the S&T null
start and the implicit hypergradient must agree (float64). With a genuinely sparse radius the
likelihood must equal evaluation's numpy metric on the same sparse model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata
from test_tuning import _intervals, _tune_cfg, jax_and_numpy_ll

from birdflow.losses.objective import LossConfig
from birdflow.model import markov, sparse
from birdflow.model.neighbours import sparse_index
from birdflow.tuning import curvature, hypergrad, inner, likelihood, newton


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _layouts(ds):
    dense = markov.WeekIndex.from_bfdata(ds)
    return dense, sparse_index(ds, radius_km=5000.0)  # 100 km cells: holds every cell


def _to_sparse(params: dict, index: markov.WeekIndex) -> dict:
    return {"z0": params["z0"], "Z": jnp.asarray(sparse.from_dense(np.asarray(params["Z"]),
                                                                   index.nbr))}


def test_sparse_log_likelihood_equals_dense_and_the_numpy_metric(monkeypatch):
    ds = make_tiny_bfdata(3, 4, n_weeks=8, seed=2)
    ds.attrs["cyclic"] = 1
    dense, big = _layouts(ds)
    assert big.n_neighbours == dense.n_max
    iv = _intervals(ds, n=80, seed=1, max_lag=5)
    pd_ = markov.init_params(jax.random.PRNGKey(1), dense, jnp.float64)
    batch = likelihood.make_batch(iv, dense)
    ll_dense = likelihood.interval_log_likelihoods(pd_, dense, batch, batch.max_lag)
    ll_big = likelihood.interval_log_likelihoods(_to_sparse(pd_, big), big, batch, batch.max_lag)
    np.testing.assert_allclose(ll_big, ll_dense, rtol=1e-12, atol=1e-14)

    small = sparse_index(ds, radius_km=160.0)  # 100 km cells: the 8 around a cell and itself
    assert small.n_neighbours < small.n_max
    ps = markov.init_params(jax.random.PRNGKey(2), small, jnp.float64)
    got, ref = jax_and_numpy_ll(ds, small, ps, iv)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert (ref <= np.log(likelihood.LL_FLOOR) + 1e-9).any(), "some end cells are out of reach"
    # a week at a time (the chunking that bounds memory on fine grids) changes nothing
    ll = likelihood.interval_log_likelihoods(ps, small, batch, batch.max_lag)
    monkeypatch.setattr(likelihood, "CHUNK_ELEMENTS", 1)
    again = likelihood.interval_log_likelihoods(ps, small, batch, batch.max_lag)
    np.testing.assert_allclose(again, ll, rtol=1e-13, atol=1e-15)


def test_st_init_on_the_sparse_layout():
    ds = make_tiny_bfdata(3, 4, n_weeks=6, seed=1)
    dense, big = _layouts(ds)
    d0, s0 = inner.st_init(ds, dense, jnp.float64), inner.st_init(ds, big, jnp.float64)
    np.testing.assert_array_equal(s0["z0"], d0["z0"])
    # full radius: the same chain, so the marginals are the S&T maps exactly
    mu_d, _ = markov.marginals(d0, dense)
    mu_s, _ = markov.marginals(s0, big)
    np.testing.assert_allclose(mu_s, mu_d, atol=1e-14)
    np.testing.assert_allclose(mu_s, dense.slot_values(ds["distr"].values), atol=1e-12)
    # a small radius: each row is the next week's S&T restricted to the row's neighbours
    small = sparse_index(ds, radius_km=160.0)
    P = np.asarray(markov.transitions(inner.st_init(ds, small, jnp.float64), small))
    s = small.slot_values(ds["distr"].values)
    for t, i in [(0, 0), (2, 3), (4, 5)]:
        ok = small.nbr[t, i] >= 0
        want = s[t + 1][small.nbr[t, i][ok]]
        np.testing.assert_allclose(P[t, i][ok], want / want.sum(), rtol=1e-12)
        assert np.all(P[t, i][~ok] == 0)


def test_gauge_mask_marks_the_real_sparse_logits():
    ds = make_tiny_bfdata(3, 4, n_weeks=6, seed=1, zero_frac=0.3)
    dense, big = _layouts(ds)
    np.testing.assert_array_equal(curvature.gauge_mask(big)["Z"],
                                  sparse.from_dense(np.asarray(curvature.gauge_mask(dense)["Z"]),
                                                    big.nbr))
    small = sparse_index(ds, radius_km=160.0)
    m = np.asarray(curvature.gauge_mask(small)["Z"])
    assert m.shape == small.nbr.shape and np.array_equal(m > 0, small.nbr >= 0)


def test_full_radius_sparse_hypergradient_equals_dense():
    """One inner solution (Newton-CG, mass-scaled |grad| <= 1e-12) in both layouts: the implicit
    hypergradients agree to 1e-7 relative (measured: ~1e-10)."""
    ds = make_tiny_bfdata(3, 4, n_weeks=6, seed=1)  # 11 cells, 5 transitions (not cyclic)
    dense, big = _layouts(ds)
    cfg = LossConfig(dist_weight=0.05, ent_weight=0.1, dist_pow=0.5)
    batch = likelihood.make_batch(_intervals(ds, n=60, seed=0), dense)
    theta = jnp.asarray(inner.theta_from_config(cfg))
    settings = hypergrad.SolveSettings(damping=0.0, rtol=1e-11, wtol=0.0, max_steps=2000)
    out = {}
    for name, index in (("dense", dense), ("sparse", big)):
        prob = inner.Inner.build(ds, cfg, jnp.float64, index)

        def outer(p, index=index):
            return -likelihood.mean_log_likelihood(p, index, batch, batch.max_lag)

        if name == "dense":
            fit = newton.make_newton(prob, newton.NewtonSettings(gtol=1e-12, max_steps=300))
            sol = fit(inner.st_init(ds, dense, jnp.float64), theta, {})
            assert sol.converged, sol.grad_norm
            params = sol.params
        else:
            params = _to_sparse(sol.params, big)
            gnorm = curvature.tree_norm(jax.grad(prob.loss)(params, theta, {}))
            assert gnorm < 1e-11  # the dense solution is stationary in the sparse layout too
        h = hypergrad.make_implicit(prob, outer, settings)(params, theta, {})
        assert h.ok, h.message
        out[name] = h
    np.testing.assert_allclose(out["sparse"].outer_loss, out["dense"].outer_loss, rtol=1e-12)
    np.testing.assert_allclose(out["sparse"].grad, out["dense"].grad, rtol=1e-7, atol=1e-12)
    assert np.abs(out["dense"].grad[:3]).min() > 1e-6  # a real gradient, not zeros


@pytest.mark.slow
def test_tune_a_sparse_model_end_to_end(tmp_path):
    """A 350 km radius (100 km cells; 318 km reaches every cell): the tune runs, θ moves, and the saved model is sparse
    and scores on the validation birds what the trajectory logged."""
    from birdflow.evaluation.evaluate import evaluate_run
    from birdflow.model.modelfile import load_model
    from birdflow.tuning.outer import tune

    res = tune(_tune_cfg(tmp_path, "model.neighbourhood_km=350"))
    traj = res.trajectory
    acc = [i for i, a in enumerate(traj["accepted"]) if a]
    assert [traj["step"][i] for i in acc] == [0, 1, 2]
    assert len({round(traj["log_ent_weight"][i], 9) for i in acc}) == 3
    model = load_model(res.model_dir)
    dense = markov.WeekIndex.from_bfdata(model.data)
    assert model.sparse and model.index.n_parameters() < 0.9 * dense.n_parameters()
    best = int(np.argmin(traj["outer_loss"]))
    metrics = evaluate_run(res.model_dir)["summary"]
    assert metrics["mean_ll"] == pytest.approx(traj["validation_ll"][best], rel=1e-6)
