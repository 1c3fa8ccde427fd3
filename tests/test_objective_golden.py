"""Golden test: our loss terms on the stored marginals of a real BirdFlowPy-fitted model.

``sstspa_model.hdf5`` (Saltmarsh Sparrow, fitted by BirdFlowPy ``update_hdf.py``) stores its
52 joint marginals and the loss trace of its 600 training steps. Recomputing obs, dist and
ent from the final marginals with our slot-layout loss functions must reproduce the last
stored values (reference §2.6: agreement to within one optimisation step).
"""

from __future__ import annotations

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from birdflow.data.bfdata import make_bfdata
from birdflow.data.grid import distance_matrix_km, to_lonlat
from birdflow.data.weeks import week_dates
from birdflow.losses import LossConfig, make_problem
from birdflow.losses.distance import distance_per_transition, transition_cost
from birdflow.losses.entropy import entropy_term
from birdflow.losses.location import l2
from birdflow.model.markov import WeekIndex

pytestmark = pytest.mark.shared


def _read(path):
    with h5py.File(path, "r") as h:
        hp = {k: h["metadata/hyperparameters"][k][()] for k in ("dist_pow", "obs_weight",
                                                               "dist_weight", "ent_weight")}
        return dict(
            distr=h["distr"][()],  # (n_active, 53), last column repeats week 1
            dynamic_mask=h["geom/dynamic_mask"][()].astype(bool),
            mask=h["geom/mask"][()].astype(bool),
            ext=h["geom/ext"][()], res=h["geom/res"][()], crs=h["geom/crs"][()][0].decode(),
            marginals=[h[f"marginals/Week{t}_to_{t + 1}"][()].astype(np.float64)
                       for t in range(1, 53)],
            loss={k: h[f"metadata/loss_values/{k}"][()] for k in ("total", "obs", "dist", "ent")},
            hp=hp,
        )


def test_losses_match_stored_birdflowpy_values(sstspa_hdf5):
    f = _read(sstspa_hdf5)
    # Cell centres (reference §1.7): row-major over the static mask, 1-based row/col.
    rows, cols = np.nonzero(f["mask"])
    xmin, _, _, ymax = f["ext"]
    x = xmin + (cols + 0.5) * f["res"][0]
    y = ymax - (rows + 0.5) * f["res"][1]
    lon, lat = to_lonlat(x, y, f["crs"])
    dist_km = distance_matrix_km(lon, lat)  # haversine, R = 6371.01 km

    index = WeekIndex.from_dynamic_mask(f["dynamic_mask"][:, :52].T, cyclic=True)
    assert index.n_transitions == 52 and len(f["marginals"]) == 52
    M = np.zeros((52, index.n_max, index.n_max))
    for t, m in enumerate(f["marginals"]):  # rows/cols in dmi order = slot order
        nt, nt1 = index.valid[t].sum(), index.valid[(t + 1) % 52].sum()
        assert m.shape == (nt, nt1)
        M[t, :nt, :nt1] = m
    mu = np.concatenate([M.sum(axis=2), M[-1].sum(axis=0)[None]])  # 53 one-way marginals
    targets = index.slot_values(f["distr"][:, :52].T)
    np.testing.assert_array_equal(targets[52], targets[0])  # the 53rd target is week 1

    cost = transition_cost(dist_km, index, float(f["hp"]["dist_pow"]))
    mu, M = jnp.asarray(mu), jnp.asarray(M)
    obs = float(l2(mu, jnp.asarray(targets)).sum())
    dist = float(distance_per_transition(M, jnp.asarray(cost)).sum())
    ent = float(entropy_term(mu, M))
    hp = f["hp"]
    total = hp["obs_weight"] * obs + hp["dist_weight"] * dist - hp["ent_weight"] * ent

    last = {k: float(v[-1]) for k, v in f["loss"].items()}
    # Stored last-step values (read from the file): obs 0.110, dist 17.04, ent 14.88.
    print({"obs": obs, "dist": dist, "ent": ent, "total": total}, "stored", last)
    assert obs == pytest.approx(last["obs"], rel=0.01)
    assert dist == pytest.approx(last["dist"], rel=0.01)
    assert ent == pytest.approx(last["ent"], rel=0.01)
    assert total == pytest.approx(last["total"], rel=0.01)


def test_make_problem_on_the_real_grid(sstspa_hdf5):
    """make_problem from a BirdFlowData of the sstspa grid, against values it did not make:
    BirdFlowPy's stored loss trace (obs and dist of the stored marginals), distances from
    the haversine formula written out here, and the projected W2 cost from geom/ext."""
    import math

    f = _read(sstspa_hdf5)
    nrow, ncol = f["mask"].shape
    rows, cols = np.nonzero(f["mask"])
    cube = np.zeros((52, nrow, ncol))
    cube[:, rows, cols] = f["distr"][:, :52].T
    xmin, _, _, ymax = f["ext"]
    x = xmin + (np.arange(ncol) + 0.5) * f["res"][0]
    y = ymax - (np.arange(nrow) + 0.5) * f["res"][1]
    ds = make_bfdata(cube, x, y, f["crs"], np.arange(1, 53), week_dates(2023),
                     species_code="sstspa", version_year=2023, res_km=100.0, source="sstspa")
    index = WeekIndex.from_bfdata(ds)
    cfg = LossConfig(location="w2", dist_pow=float(f["hp"]["dist_pow"]))
    problem = make_problem(ds, index, cfg)
    M = np.zeros((52, index.n_max, index.n_max))
    for t, m in enumerate(f["marginals"]):
        M[t, : m.shape[0], : m.shape[1]] = m
    mu = np.concatenate([M.sum(axis=2), M[-1].sum(axis=0)[None]])
    last = {k: float(v[-1]) for k, v in f["loss"].items()}
    obs = float(l2(jnp.asarray(mu), problem.targets).sum())
    dist = float(distance_per_transition(jnp.asarray(M), problem.dist_cost).sum())
    assert obs == pytest.approx(last["obs"], rel=0.01)  # stored by BirdFlowPy: 0.110
    assert dist == pytest.approx(last["dist"], rel=0.01)  # 17.04

    def haversine_km(lon1, lat1, lon2, lat2, r=6371.01):
        p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * r * math.asin(math.sqrt(h))

    lon, lat = to_lonlat(xmin + (cols + 0.5) * f["res"][0], ymax - (rows + 0.5) * f["res"][1],
                         f["crs"])
    for t, i, j in ((0, 0, 1), (10, 3, 7), (40, 5, 2), (51, 2, 9)):
        ci, cj = index.slot_cell[t][i], index.slot_cell[(t + 1) % 52][j]
        d = haversine_km(lon[ci], lat[ci], lon[cj], lat[cj])
        assert float(problem.dist_cost[t, i, j]) == pytest.approx((d / 100) ** cfg.dist_pow,
                                                                   rel=1e-5)
    sq = ((cols[:, None] - cols[None]) ** 2 + (rows[:, None] - rows[None]) ** 2).astype(float)
    np.testing.assert_allclose(problem.w2_cell_cost, sq / sq.max(), rtol=1e-5, atol=1e-7)
