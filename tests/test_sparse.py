"""Neighbourhood-sparse transitions: the nbr table, the chain maths, losses and training.

The reference for the sparse layout is the dense one: with a radius that holds every cell the
two must agree term by term and in the gradient (float64). Hand-built grids on the equator
(EPSG:4326, 1 degree cells: 111.195 km apart on the BirdFlowR sphere, R = 6371.01 km) give
neighbour tables that can be counted by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata

from birdflow.data.bfdata import make_bfdata
from birdflow.data.grid import great_circle_km
from birdflow.data.reach import resolve_radius_km
from birdflow.data.resolution import count_parameters
from birdflow.data.weeks import week_dates
from birdflow.errors import ConfigError
from birdflow.losses import LossConfig, init_loss_state, make_problem, objective
from birdflow.losses.distance import sparse_transition_cost, transition_cost
from birdflow.losses.objective import W2Config
from birdflow.model import sparse
from birdflow.model.markov import WeekIndex, init_params, marginals, project, transitions
from birdflow.model.neighbours import build_neighbours, sparse_index

DEG_KM = 6371.01 * np.pi / 180  # 111.195 km: one degree of a great circle


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def equator_grid(masks: np.ndarray, n_rows: int, n_cols: int, res_km: float = 100.0):
    """BirdFlowData on 1-degree cells centred at lon 0..n_cols-1, lat 0.5, -0.5, ...

    ``masks`` (n_weeks, n_rows * n_cols) bool: cells with S&T mass per week (row-major).
    """
    n_weeks = masks.shape[0]
    a = np.where(masks, 1.0 + np.arange(masks.size).reshape(masks.shape) % 3, 0.0)
    x = np.arange(n_cols, dtype=float)
    y = 0.5 - np.arange(n_rows, dtype=float)
    return make_bfdata(a.reshape(n_weeks, n_rows, n_cols), x, y, "EPSG:4326",
                       np.arange(1, n_weeks + 1), week_dates(2022)[:n_weeks],
                       species_code="eq", version_year=2022, res_km=res_km, source="equator")


def _cells(*ids, n=8):
    m = np.zeros(n, bool)
    m[list(ids)] = True
    return m


# 2 x 4 grid: c0..c3 on lat 0.5, c4..c7 on lat -0.5; week 1 all cells, week 2 cells 1, 2, 5, 6
# (slots 0, 1, 2, 3). Within 120 km: the cell itself and its 4 direct neighbours (111.2 km);
# diagonals are 157.3 km away.
HAND_MASKS = np.stack([np.ones(8, bool), _cells(1, 2, 5, 6)])
HAND_TABLE_120 = [[0, -1, -1], [0, 1, 2], [0, 1, 3], [1, -1, -1],
                  [2, -1, -1], [0, 2, 3], [1, 2, 3], [3, -1, -1]]


def test_hand_built_grid_gives_the_counted_table():
    ds = equator_grid(HAND_MASKS, 2, 4)
    index = WeekIndex.from_bfdata(ds)
    nbr = build_neighbours(ds, index, radius_km=120.0)
    assert nbr.dtype == np.int32 and nbr.shape == (1, 8, 3)
    np.testing.assert_array_equal(nbr[0], HAND_TABLE_120)
    # 160 km adds the diagonals: c0 reaches c1 and c5 (slots 0, 2); c1 reaches every cell
    nbr = build_neighbours(ds, index, radius_km=160.0)
    np.testing.assert_array_equal(nbr[0, 0], [0, 2, -1, -1])
    np.testing.assert_array_equal(nbr[0, 1], [0, 1, 2, 3])
    # k = 2 nearest: c0 -> c1 (111.2 km), c5 (157.3 km); c3 -> c2 (111.2), c6 (157.3)
    nbr = build_neighbours(ds, index, k=2)
    np.testing.assert_array_equal(nbr[0, 0], [0, 2])
    np.testing.assert_array_equal(nbr[0, 3], [1, 3])


def test_radius_holding_everything_lists_all_slots_in_order(tiny_sparse):
    ds, dense, big = tiny_sparse
    n_next = dense.valid.sum(axis=1)[(np.arange(dense.n_transitions) + 1) % dense.n_weeks]
    for t in range(dense.n_transitions):
        for i in range(dense.n_max):
            row = big.nbr[t, i]
            if dense.valid[t, i]:
                np.testing.assert_array_equal(row[: n_next[t]], np.arange(n_next[t]))
                assert np.all(row[n_next[t]:] == -1)
            else:
                assert np.all(row == -1), "padding rows are all -1"
    assert big.n_parameters() == dense.n_parameters()


def test_radius_smaller_than_a_cell_names_both_numbers():
    ds = equator_grid(HAND_MASKS, 2, 4, res_km=100.0)
    with pytest.raises(ConfigError, match=r"model\.neighbourhood_km=50: smaller than one cell "
                                          r"\(res_km = 100 km\)"):
        build_neighbours(ds, WeekIndex.from_bfdata(ds), radius_km=50.0)


def test_stranded_cells_name_week_count_mass_and_radius():
    ds = equator_grid(HAND_MASKS, 2, 4, res_km=100.0)
    # 105 km: c0, c3, c4, c7 have no week-2 cell within reach (the nearest is 111.2 km away)
    mass = ds["distr"].values[0, [0, 3, 4, 7]].sum()
    need = int(np.ceil(great_circle_km(0, 0.5, 1, 0.5)))  # 112 km
    with pytest.raises(ConfigError) as e:
        build_neighbours(ds, WeekIndex.from_bfdata(ds), radius_km=105.0)
    msg = str(e.value)
    assert "model.neighbourhood_km=105: transition week 1 -> 2: 4 week-1 cell(s)" in msg
    assert f"{100 * mass:.3g}% of its S&T mass reach no week-2 cell" in msg
    assert f"is {need} km" in msg and f"model.neighbourhood_km>={need}" in msg


def test_unreachable_target_names_week_count_mass_and_radius():
    masks = np.stack([_cells(1), _cells(1, 3)])  # week 2's c3 is 2 degrees (222.4 km) from c1
    ds = equator_grid(masks, 2, 4)
    need = int(np.ceil(great_circle_km(1, 0.5, 3, 0.5)))
    mass = ds["distr"].values[1, 1]  # only c1 and c3 are in the static mask: c3 is cell 1
    with pytest.raises(ConfigError) as e:
        build_neighbours(ds, WeekIndex.from_bfdata(ds), radius_km=150.0)
    msg = str(e.value)
    assert need == 223 and "1 week-2 cell(s) holding" in msg and f"{100 * mass:.3g}%" in msg
    assert "unreachable from every week-1 cell" in msg and f"is {need} km" in msg
    # k nearest: from c1, k = 1 reaches only c1 itself; k = 2 reaches c3 too
    with pytest.raises(ConfigError, match=r"model\.neighbours_k=1: .*1 week-2 cell.*smallest k "
                                          r"that reaches every cell in every week is 2"):
        build_neighbours(ds, WeekIndex.from_bfdata(ds), k=1)


def test_auto_radius_rule():
    assert resolve_radius_km(None, 100.0, {}) is None
    assert resolve_radius_km(300, 100.0, {}) == 300.0
    assert resolve_radius_km("auto", 100.0, {}) == 1500.0  # max(1,500 km, 3 cells)
    assert resolve_radius_km("auto", 600.0, {}) == 1800.0
    assert resolve_radius_km("auto", 100.0, {"max_weekly_km": 800}) == 800.0
    synth = {"code": "synthetic", "max_weekly_km": 1100, "synthetic": {"size": 2.0}}
    assert resolve_radius_km("auto", 100.0, synth) == 2200.0  # per unit of size


def test_sparse_parameter_count_for_the_budget():
    # one row of 4 equator cells, both weeks all active (cyclic: 2 transitions)
    active = np.ones((2, 1, 4), bool)
    x, y = np.arange(4.0), np.array([0.0])
    assert count_parameters(active, x, y, "EPSG:4326", 100.0) == 4 + 2 * 16  # dense
    # 120 km: self + left/right = 4 + 2 * 3 = 10 pairs per transition
    assert count_parameters(active, x, y, "EPSG:4326", 100.0, 120.0) == 4 + 2 * 10
    # 230 km adds the 2-cell moves (222.4 km): 10 + 2 * 2 = 14 per transition
    assert count_parameters(active, x, y, "EPSG:4326", 100.0, 230.0) == 4 + 2 * 14


@pytest.fixture(scope="module")
def tiny_sparse():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=5, seed=2, zero_frac=0.3)
    return ds, WeekIndex.from_bfdata(ds), sparse_index(ds, radius_km=5000.0)


def _dense_params(index, seed=0):
    return init_params(jax.random.key(seed), index, dtype=jnp.float64)


@pytest.mark.parametrize("location", ["l2", "w2"])
def test_full_radius_sparse_equals_dense(tiny_sparse, location):
    ds, dense, big = tiny_sparse
    cfg = LossConfig(location=location, dist_weight=0.05, ent_weight=0.02,
                     w2=W2Config(epsilon_cells=0.65, threshold=1e-10, max_iterations=5000))
    pd = _dense_params(dense)
    ps = {"z0": pd["z0"], "Z": jnp.asarray(sparse.from_dense(np.asarray(pd["Z"]), big.nbr))}
    out = {}
    for name, index, params in (("dense", dense, pd), ("sparse", big, ps)):
        problem = make_problem(ds, index, cfg)
        state = init_loss_state(problem, index, cfg)
        vg = jax.jit(lambda p, st, problem=problem, index=index: jax.value_and_grad(
            objective, has_aux=True)(p, problem, index, cfg, st, 0))
        (_, (terms, _)), grads = vg(params, state)
        out[name] = terms, grads
    (td, gd), (ts, gs) = out["dense"], out["sparse"]
    keys = ["total", "obs", "l2", "dist", "ent"] + (["w2"] if location == "w2" else [])
    for k in keys:
        np.testing.assert_allclose(ts[k], td[k], rtol=1e-10, err_msg=k)
    np.testing.assert_allclose(gs["z0"], gd["z0"], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(gs["Z"], sparse.from_dense(np.asarray(gd["Z"]), big.nbr),
                               rtol=1e-8, atol=1e-14)
    # outside the neighbourhood (padding) the dense gradient is zero too: nothing is lost
    back = sparse.to_dense(np.asarray(gs["Z"]), big.nbr)
    np.testing.assert_allclose(back, np.asarray(gd["Z"]), atol=1e-14)


@pytest.fixture(scope="module")
def genuinely_sparse():
    ds = make_tiny_bfdata(n_rows=4, n_cols=5, n_weeks=4, seed=5, zero_frac=0.1)
    index = sparse_index(ds, radius_km=260.0)  # 100 km cells: a 5x5 diamond-ish patch
    assert index.n_neighbours < index.n_max
    return ds, index


def test_sparse_gradient_matches_finite_differences(genuinely_sparse):
    ds, index = genuinely_sparse
    cfg = LossConfig(dist_weight=0.05, ent_weight=0.05)
    problem = make_problem(ds, index, cfg)
    params = init_params(jax.random.key(3), index, dtype=jnp.float64)

    @jax.jit
    def f(p):
        return objective(p, problem, index, cfg, {}, 0)[0]

    g = jax.grad(f)(params)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = {k: jnp.asarray(rng.standard_normal(a.shape)) for k, a in params.items()}
        v["Z"] = v["Z"] * (index.nbr >= 0)  # padding logits are masked: no direction there
        h = 1e-5
        plus = {k: params[k] + h * v[k] for k in params}
        minus = {k: params[k] - h * v[k] for k in params}
        fd = (f(plus) - f(minus)) / (2 * h)
        an = sum(jnp.vdot(g[k], v[k]) for k in params)
        np.testing.assert_allclose(an, fd, rtol=1e-7)


def test_sparse_invariants(genuinely_sparse):
    ds, index = genuinely_sparse
    params = init_params(jax.random.key(1), index, dtype=jnp.float64)
    P = np.asarray(transitions(params, index))
    ok = index.nbr >= 0
    valid_from = index.valid[: index.n_transitions]
    np.testing.assert_allclose(P.sum(axis=2)[valid_from], 1.0, rtol=1e-12)
    assert np.all(P[~ok] == 0) and np.all(P.sum(axis=2)[~valid_from] == 0)
    mu, M = (np.asarray(a) for a in marginals(params, index))
    assert M.shape == (index.n_transitions, index.n_max, index.n_neighbours)
    np.testing.assert_allclose(mu.sum(axis=1), 1.0, rtol=1e-12)
    dense_M = sparse.to_dense(M, index.nbr)
    np.testing.assert_allclose(dense_M.sum(axis=1), mu[1:], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dense_M.sum(axis=2), mu[:-1], rtol=1e-12, atol=1e-15)
    assert np.all(mu[~index.valid[index.week_of_marginal()]] == 0)
    seq = np.asarray(project(jnp.asarray(mu[0]), jnp.asarray(P), 0, index.n_transitions,
                             nbr=index.nbr))
    np.testing.assert_allclose(seq, mu, rtol=1e-12, atol=1e-15)


def test_sparse_distance_cost_equals_dense_at_kept_pairs(genuinely_sparse):
    ds, index = genuinely_sparse
    dense = transition_cost(ds["distance_km"].values, WeekIndex.from_bfdata(ds), 0.4)
    cost = sparse_transition_cost(ds["cell_lon"].values, ds["cell_lat"].values, index, 0.4)
    assert cost.shape == index.nbr.shape
    np.testing.assert_allclose(cost, sparse.from_dense(dense, index.nbr), rtol=1e-12)
    assert np.all(cost[index.nbr < 0] == 0)


def _train_cfg(tmp_path, *overrides):
    from test_train import make_cfg

    return make_cfg(tmp_path, *overrides)


@pytest.mark.parametrize("override, match", [
    ("model.neighbourhood_km=-5", r"model\.neighbourhood_km=-5"),
    ("model.neighbourhood_km=far", r"model\.neighbourhood_km='far'"),
    ("model.neighbours_k=0", r"model\.neighbours_k=0"),
    ("+model.radius=3", r"model\.radius: unknown key"),
])
def test_bad_model_config_fails_before_any_work(tmp_path, override, match):
    from birdflow.training.loop import train

    with pytest.raises(ConfigError, match=match):
        train(_train_cfg(tmp_path / "run", override), data="must not be touched")
    assert not (tmp_path / "run").exists()


def test_both_radius_and_k_is_an_error(tmp_path):
    from birdflow.training.loop import train

    cfg = _train_cfg(tmp_path / "run", "model.neighbourhood_km=300", "model.neighbours_k=5")
    with pytest.raises(ConfigError, match=r"set one of them"):
        train(cfg, data="must not be touched")


@pytest.mark.parametrize("override", ["model.neighbourhood_km=150", "model.neighbours_k=6"])
def test_training_a_sparse_model_reduces_the_loss(tmp_path, override):
    from birdflow.training.loop import train

    ds = make_tiny_bfdata(n_rows=3, n_cols=4, seed=3)
    res = train(_train_cfg(tmp_path, override, "checkpoint_every=30"), data=ds)
    total = np.asarray(res.history["total"])
    assert len(total) == 30 and np.all(np.isfinite(total))
    assert total[-1] < 0.5 * total[0]
    index = res.model.index
    assert index.sparse and res.model.marginals.shape == index.nbr.shape
    assert index.n_parameters() < WeekIndex.from_bfdata(ds).n_parameters()
    np.testing.assert_allclose(res.model.marginals.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_sparse_run_reloads_with_its_layout(tmp_path):
    from birdflow.model.fitted import load_model
    from birdflow.training.loop import train

    ds = make_tiny_bfdata(n_rows=3, n_cols=4, seed=3)
    res = train(_train_cfg(tmp_path, "model.neighbourhood_km=150", "optim.steps=5",
                           "checkpoint_every=5"), data=ds)
    back = load_model(tmp_path)
    assert back.index.sparse
    np.testing.assert_array_equal(back.index.nbr, res.model.index.nbr)
    np.testing.assert_allclose(back.marginals, res.model.marginals, rtol=1e-6)


def test_training_with_a_radius_that_cuts_off_mass_fails_before_the_run_dir(tmp_path):
    from birdflow.training.loop import train

    ds = make_tiny_bfdata(n_rows=3, n_cols=4, seed=3)  # 100 km cells, random holes per week
    with pytest.raises(ConfigError, match=r"model\.neighbourhood_km=100: transition week \d+ -> "
                                          r"\d+: .*the smallest radius .* is 1\d\d km"):
        train(_train_cfg(tmp_path / "run", "model.neighbourhood_km=100"), data=ds)
    assert not (tmp_path / "run").exists()


def _pairs_within(ds, radius_km: float) -> int:
    """Independent count from the dense distance matrix: n_1 + pairs within the radius."""
    dm, d = ds["dynamic_mask"].values, ds["distance_km"].values
    pairs = sum(int((d[np.ix_(dm[t], dm[(t + 1) % 52])] <= radius_km).sum()) for t in range(52))
    return int(dm[0].sum()) + pairs


def test_budget_resolution_counts_sparse_parameters(tmp_path):
    from test_preprocess import blob_cube, laea_tif, species_cfg

    from birdflow.data.bfdata import n_parameters
    from birdflow.data.preprocess import preprocess
    from birdflow.data.resolution import clean_ladder

    RADIUS = 30.0  # km: the blob spans ~70 km, so this keeps a genuine neighbourhood
    path = laea_tif(tmp_path, blob_cube(), res_km=10.0)
    cfg, data = species_cfg(raster=str(path), res_km=None, max_params=6000), {"root": str(tmp_path)}
    dense = preprocess(cfg, data)
    ds = preprocess(cfg, data, neighbourhood_km=RADIUS)
    res = ds.attrs["res_km"]
    assert res < dense.attrs["res_km"], "sparse parameters buy a finer grid"
    assert _pairs_within(ds, RADIUS) <= 6000 < n_parameters(ds["dynamic_mask"].values)
    ladder = clean_ladder(10)
    finer = ladder[np.flatnonzero(ladder == res)[0] - 1]
    assert _pairs_within(preprocess({**cfg, "res_km": finer}, data), RADIUS) > 6000
    # the preprocess command counts the same layout from its model group
    from birdflow.cli.preprocess import main

    out = main([f"species.raster={path}", "species.res_km=null", "species.max_params=6000",
                "species.code=blob", f"data.root={tmp_path}", f"model.neighbourhood_km={RADIUS}"])
    import xarray as xr

    with xr.open_dataset(out) as saved:
        assert saved.attrs["res_km"] == res


def test_cells_without_coordinates_are_named():
    from birdflow.errors import DataError

    ds = make_tiny_bfdata(n_rows=3, n_cols=4, seed=3)
    lon = ds["cell_lon"].values.copy()
    lon[2] = np.nan
    ds = ds.assign(cell_lon=(ds["cell_lon"].dims, lon))
    with pytest.raises(DataError, match=r"cell_lon/cell_lat: 1 of \d+ cells .*first: cell 2"):
        sparse_index(ds, radius_km=10_000)
