"""Neighbourhood-sparse fitted models (issue 15): the same chain held sparse and dense gives the
same metrics, predictions, routes, exports and model files, and the sparse one is never
turned into the all-weeks dense array.

The sparse models are built here, without the training code: a random dense chain on a tiny
grid, then (a) a neighbour table that keeps every next-week cell (K = n_max, neighbours in a
random order per row) and (b) one that keeps a random subset of each row (the dense chain's
other entries are zeroed and its rows renormalised, so the dense and sparse models are the
same chain). The sparse joints are the dense ones read through ``nbr``, value for value.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_bfdata
from test_export import assert_same_dataset, tree
from test_routes import cells_by_step, tv_bound
from test_tracks import write_csv

from birdflow.data.tracks import load_tracks
from birdflow.errors import ConfigError, DataError
from birdflow.evaluation.evaluate import evaluate_model, transition_tv
from birdflow.evaluation.flux import flux_dataset
from birdflow.evaluation.intervals import score_intervals
from birdflow.evaluation.metrics import slot_transitions
from birdflow.export import export_birdflowr, import_birdflowr
from birdflow.model import joints
from birdflow.model.fitted import BirdFlowModel, load_model, save_model
from birdflow.model.markov import WeekIndex
from birdflow.model.sparsify import density, sparsify

HYPER = {"obs_weight": 1.0, "ent_weight": 0.01, "dist_weight": 0.05, "dist_pow": 0.9}
SEASONS = {"prebreeding_migration_start": "2022-03-01", "prebreeding_migration_end": "2022-05-31",
           "postbreeding_migration_start": "2022-09-01",
           "postbreeding_migration_end": "2022-11-15"}


def dense_chain(ds, keep_frac: float, seed: int) -> BirdFlowModel:
    """Random transitions inside each week's dynamic mask; with keep_frac < 1 each row keeps a
    random subset of its next-week cells (at least one), renormalised."""
    index = WeekIndex.from_bfdata(ds)
    rng = np.random.default_rng(seed)
    M = np.zeros((index.n_transitions, index.n_max, index.n_max))
    mu = index.slot_values(ds["distr"].values)[0]
    for t in range(index.n_transitions):
        nf, nt = (int(index.valid[w % index.n_weeks].sum()) for w in (t, t + 1))
        P = rng.random((nf, nt))
        if keep_frac < 1:
            drop = rng.random((nf, nt)) > keep_frac
            drop[np.arange(nf), rng.integers(nt, size=nf)] = False
            P[drop] = 0.0
        M[t, :nf, :nt] = mu[:nf, None] * P / P.sum(axis=1, keepdims=True)
        mu = np.zeros(index.n_max)
        mu[:nt] = M[t, :nf, :nt].sum(axis=0)
    return BirdFlowModel(data=ds, index=index, marginals=M, hyperparameters=dict(HYPER))


def sparse_copy(model: BirdFlowModel, full: bool, seed: int = 0) -> BirdFlowModel:
    """The same chain in the sparse layout: every valid next-week slot (``full``) or only the
    non-zero entries, neighbours shuffled within each row and padded with -1."""
    idx, M = model.index, model.marginals
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(idx.n_transitions):
        valid_to = np.flatnonzero(idx.valid[(t + 1) % idx.n_weeks])
        for i in range(idx.n_max):
            if not idx.valid[t % idx.n_weeks, i]:
                rows.append(np.zeros(0, dtype=np.int64))
                continue
            kept = valid_to if full else np.flatnonzero(M[t, i] > 0)
            rows.append(rng.permutation(kept))
    K = max(len(r) for r in rows)
    nbr = np.full((idx.n_transitions, idx.n_max, K), -1, dtype=np.int32)
    Ms = np.zeros(nbr.shape)
    for n, r in enumerate(rows):
        t, i = divmod(n, idx.n_max)
        nbr[t, i, : len(r)] = r
        Ms[t, i, : len(r)] = M[t, i, r]
    sparse_index = dataclasses.replace(idx, nbr=nbr)
    return dataclasses.replace(model, index=sparse_index, marginals=Ms)


@pytest.fixture(scope="module")
def chains():
    """{"full": (dense, sparse K = n_max), "some": (dense, sparse K < n_max)}: same chains."""
    ds = make_tiny_bfdata(n_rows=4, n_cols=5, seed=11)
    ds.attrs.update(SEASONS)
    out = {}
    for case, keep, seed in (("full", 1.0, 0), ("some", 0.4, 1)):
        dense = dense_chain(ds, keep, seed)
        out[case] = (dense, sparse_copy(dense, full=case == "full"))
    return out


@pytest.fixture(params=["full", "some"])
def pair(request, chains):
    return chains[request.param]


@pytest.fixture(scope="module")
def tracks_csv(chains, tmp_path_factory):
    """40 birds from routes of the reduced chain, 5 fixes each on random weeks: intervals of
    lags 1..~40 weeks, some with end cells a reduced chain cannot reach."""
    dense = chains["some"][0]
    routes = dense.route(40, start=1, n_steps=51, from_marginals=True, seed=3)
    rng = np.random.default_rng(4)
    rows = []
    for rid, r in routes.groupby("route_id"):
        for _, fix in r.iloc[np.sort(rng.choice(len(r), 5, replace=False))].iterrows():
            rows.append((f"b{rid}", f"{pd.Timestamp(fix.date):%Y-%m-%d}", int(fix.i) - 1))
    return write_csv(tmp_path_factory.mktemp("tracks") / "tracks.csv", dense.data, rows)


def test_sparse_layout_is_kept_and_weeks_densify_one_at_a_time(pair):
    dense, sparse = pair
    K = sparse.index.n_neighbours
    assert sparse.sparse and not dense.sparse
    n_pairs = int((sparse.index.nbr >= 0).sum())
    all_pairs = dense.index.n_parameters() - dense.index.valid[0].sum()
    assert (K == dense.index.n_max) if n_pairs == all_pairs else (
        K < dense.index.n_max and n_pairs < all_pairs / 2)
    assert sparse.marginals.shape == (dense.n_transitions, dense.index.n_max, K)
    for t in range(dense.n_transitions):
        assert np.array_equal(sparse.marginal_at(t), dense.marginal_at(t)), t
        assert np.array_equal(sparse.joint_dense_at(t), dense.marginals[t]), t
    np.testing.assert_allclose(sparse.distrs(), dense.distrs(), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(sparse.distrs().sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(sparse.transition_at(7), dense.transition_at(7), atol=1e-15)
    assert f"neighbourhood-sparse, {K} per row, {n_pairs} pairs kept" in repr(sparse)
    assert sparse.index.n_parameters() == dense.index.valid[0].sum() + n_pairs
    with pytest.raises(ConfigError, match="neighbourhood-sparse"):
        slot_transitions(sparse)  # the all-weeks dense path refuses sparse models
    with pytest.raises(DataError, match=r"needs \(52, 19, "):
        dataclasses.replace(sparse, marginals=sparse.marginals[:, :, :-1].copy())
    bad = sparse.marginals.copy()
    pad = np.argwhere(sparse.index.nbr[3] < 0)[0]
    bad[3, pad[0], pad[1]] = 0.25
    with pytest.raises(DataError, match=r"transition 4: 1 padding entries .*largest 0.25"):
        dataclasses.replace(sparse, marginals=bad)


@pytest.fixture
def dense_joint_calls(monkeypatch):
    """Counts one-week densifications of a sparse model (a spy: it calls the real function)."""
    calls = []
    real = joints.dense_joint

    def spy(index, M, t):
        if index.sparse:
            calls.append(t)
        return real(index, M, t)

    monkeypatch.setattr(joints, "dense_joint", spy)
    return calls


def test_every_evaluation_metric_matches_the_dense_model(pair, tracks_csv, dense_joint_calls):
    """Fit, distribution performance (year, range and seasons) and the interval scores of a
    tracks table - log-likelihood over multi-week lags, energy and distance scores - are the
    dense model's; none of them densifies a sparse week."""
    dense, sparse = pair
    tracks = load_tracks(tracks_csv, dense.data, warn=False)
    assert tracks.intervals["lag"].max() > 20
    a, b = (evaluate_model(m, tracks, w2=False, week_range=(10, 30)) for m in (dense, sparse))
    assert dense_joint_calls == []
    assert a["summary"]["n_intervals"] > 100 and "min_dist_cor_prebreeding" in a["summary"]
    assert a["summary"].keys() == b["summary"].keys()
    for key, va in a["summary"].items():
        assert b["summary"][key] == (va if not isinstance(va, float) else pytest.approx(
            va, rel=1e-9, abs=1e-15))
    for key, va in a["per_week"].items():
        np.testing.assert_allclose(np.asarray(b["per_week"][key], float),
                                   np.asarray(va, float), rtol=1e-9, atol=1e-15, err_msg=key)
    assert a["intervals"] == b["intervals"]
    sa, sb = (score_intervals(m, tracks.intervals) for m in (dense, sparse))
    cols = ["ll", "null_ll", "pred_km", "energy_score_bf", "win_prob", "weight"]
    np.testing.assert_allclose(sb[cols].to_numpy(float), sa[cols].to_numpy(float), rtol=1e-9,
                               atol=1e-12)


def test_truth_metrics_mix_sparse_and_dense(chains):
    """learned-vs-true transition TV with either side sparse equals the dense-dense value."""
    (full_d, full_s), (some_d, some_s) = chains["full"], chains["some"]
    want = transition_tv(full_d, some_d)
    assert want > 0.1
    for model, truth in ((full_s, some_d), (full_d, some_s), (full_s, some_s)):
        assert transition_tv(model, truth) == pytest.approx(want, rel=1e-12)
    assert transition_tv(some_s, some_d) == pytest.approx(0.0, abs=1e-12)


def test_predict_and_forecast_match_the_dense_model(pair, dense_joint_calls):
    dense, sparse = pair
    for kwargs in ({"start": 6, "end": 30}, {"start": 40, "n_steps": 30, "direction": "backward"},
                   {"start": "2022-12-10", "end": "2022-03-01"}):
        d = dense.distr(kwargs["start"])  # the model's own distribution: every cell can move
        np.testing.assert_allclose(sparse.predict(d, **kwargs).values,
                                   dense.predict(d, **kwargs).values, atol=1e-14)
    start = dense.data["distr"].values[5]
    f = sparse.forecast_at(start, 5, 60)
    np.testing.assert_allclose(f, dense.forecast_at(start, 5, 60), atol=1e-14)
    np.testing.assert_allclose(f.sum(axis=1), 1.0, atol=1e-9)
    assert dense_joint_calls == []


def test_routes_are_the_dense_models_draw_for_draw_and_in_distribution(pair, dense_joint_calls):
    """Sparse rows are read in slot order, so one seed gives the dense model's routes exactly;
    weekly frequencies of many routes match the model's forecast (test_routes' bound)."""
    dense, sparse = pair
    for kwargs in ({"start": 3, "n_steps": 60}, {"start": 20, "n_steps": 30,
                                                 "direction": "backward"}):
        pd.testing.assert_frame_equal(sparse.route(50, **kwargs, seed=7),
                                      dense.route(50, **kwargs, seed=7))
    n, t0, k = 4000, 8, 15
    df = sparse.route(n, start=t0 + 1, n_steps=k, from_marginals=True, seed=1)
    expected = dense.forecast_at(dense.distr_at(t0), t0, k)
    cells = cells_by_step(df)
    for step in range(k + 1):
        freq = np.bincount(cells[:, step], minlength=dense.n_cells) / n
        tv = 0.5 * np.abs(freq - expected[step]).sum()
        assert tv < tv_bound(expected[step], n), (step, tv)
    assert dense_joint_calls == []


def test_flux_matches_the_dense_model(pair):
    dense, sparse = pair
    fd, fs = flux_dataset(dense), flux_dataset(sparse)
    for name in fd.data_vars:
        np.testing.assert_allclose(fs[name].values, fd[name].values, atol=1e-15,
                                   err_msg=str(name))


def test_birdflowr_export_is_the_dense_models_file(pair, tmp_path, dense_joint_calls):
    """Dense Week{t}_to_{t+1} marginals written one densified week at a time; every dataset
    equals the dense model's export (bar the export timestamp); it reads back as that model."""
    dense, sparse = pair
    pa = export_birdflowr(dense, tmp_path / "dense.hdf5")
    pb = export_birdflowr(sparse, tmp_path / "sparse.hdf5")
    assert sorted(dense_joint_calls) == list(range(dense.n_transitions))  # one per week
    with h5py.File(pa) as fa, h5py.File(pb) as fb:
        ta, tb = tree(fa), tree(fb)
        assert ta.keys() == tb.keys()
        for key, obj in ta.items():
            if isinstance(obj, h5py.Dataset) and key != "metadata/birdflow_model_date":
                assert_same_dataset(key, obj, tb[key])
        assert fb["marginals/Week1_to_2"].shape == dense.marginal_at(0).shape
    back = import_birdflowr(pb)
    assert not back.sparse
    for t in range(dense.n_transitions):
        np.testing.assert_array_equal(back.marginal_at(t), dense.marginal_at(t).astype(np.float32))


def test_model_nc_round_trip_keeps_the_neighbour_table(pair, tmp_path):
    import xarray as xr

    dense, sparse = pair
    save_model(sparse, tmp_path)
    back = load_model(tmp_path)
    assert back.sparse
    np.testing.assert_array_equal(back.index.nbr, sparse.index.nbr)
    np.testing.assert_array_equal(back.index.slot_cell, sparse.index.slot_cell)
    np.testing.assert_array_equal(back.marginals, sparse.marginals.astype(np.float32))
    np.testing.assert_allclose(back.distrs(), dense.distrs(), atol=1e-7)
    with xr.open_dataset(tmp_path / "model.nc", engine="h5netcdf") as f:
        assert f["nbr"].dtype == np.int32 and f["nbr"].dims == ("transition", "slot", "neighbour")
        assert f["marginals"].dims == ("transition", "slot", "neighbour")
        assert f["nbr"].attrs["units"] == "1" and "padding" in f["nbr"].attrs["long_name"]
        assert "paired with nbr" in f["marginals"].attrs["long_name"]
    save_model(dense, tmp_path / "d")
    with xr.open_dataset(tmp_path / "d" / "model.nc", engine="h5netcdf") as f:
        assert "nbr" not in f and f["marginals"].dims == ("transition", "slot", "slot_to")
    assert not load_model(tmp_path / "d").sparse


@pytest.mark.parametrize("method", ["model", "marginal", "conditional"])
def test_post_hoc_sparsify_of_a_sparse_model_is_that_of_the_dense_one(pair, method):
    """BirdFlowR's methods on the sparse layout (conditional on densified weeks) zero the same
    entries as on the dense model, fix the same dead ends and re-chain to the same joints."""
    dense, sparse = pair
    assert density(sparse) == pytest.approx(density(dense), rel=1e-12)
    sd, stats_d = sparsify(dense, method, p=0.9)
    ss, stats_s = sparsify(sparse, method, p=0.9)
    assert ss.sparse and np.array_equal(ss.index.nbr, sparse.index.nbr)
    assert stats_d["density_after"] < 0.8 * stats_d["density_before"]  # it did sparsify
    for t in range(dense.n_transitions):
        np.testing.assert_allclose(ss.marginal_at(t), sd.marginal_at(t), rtol=1e-9, atol=1e-15)
        assert np.array_equal(ss.marginal_at(t) > 0, sd.marginal_at(t) > 0), t
    for key, value in stats_d.items():
        assert stats_s[key] == (value if isinstance(value, str | bool | int) else
                                pytest.approx(value, rel=1e-9, abs=1e-12)), key


def test_saved_sparse_run_through_the_commands(chains, tracks_csv, tmp_path):
    """A sparse run dir goes through `birdflow evaluate` (with a dense truth), `birdflow export`
    (BirdFlowR HDF5 and flux) and the run scorer of compare, with the dense run's numbers."""
    import json
    from pathlib import Path

    from conftest import run_command

    from birdflow.cli.evaluate import main as evaluate_main
    from birdflow.cli.export import main as export_main
    from birdflow.evaluation.compare import score_runs

    dense, sparse = chains["some"]
    for name, model in (("dense", dense), ("sparse", sparse), ("truth", chains["full"][0])):
        save_model(model, tmp_path / name)
    rows = score_runs([tmp_path / "dense", tmp_path / "sparse"], tracks_csv, tmp_path / "truth")
    for key in ("mean_ll", "mean_ll_gain", "mean_tv", "min_distr_cor", "truth_transition_tv"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-9), key  # both float32 in model.nc
    assert rows[1]["n_intervals"] == rows[0]["n_intervals"] > 100
    for name in ("dense", "sparse"):
        args = [f"run={tmp_path / name}", f"tracks={tracks_csv}", f"truth={tmp_path / 'truth'}",
                "w2=false"]
        assert run_command(evaluate_main, args) == 0
    # scored on a tracks file that is not the run's own: metrics_<stem>.json (never metrics.json)
    got = [json.loads((tmp_path / n / f"metrics_{Path(tracks_csv).stem}.json").read_text())
           ["summary"] for n in ("dense", "sparse")]
    assert got[1]["mean_ll"] == pytest.approx(got[0]["mean_ll"], rel=1e-9)
    assert got[1]["truth_mean_ll"] == pytest.approx(got[0]["truth_mean_ll"], rel=1e-9)
    for fmt in ("hdf5", "flux"):
        out = tmp_path / f"out_{fmt}"
        out.mkdir()
        assert run_command(export_main, [f"run={tmp_path / 'sparse'}", f"format={fmt}",
                                         f"out={out}/"]) == 0
    back = import_birdflowr(next((tmp_path / "out_hdf5").glob("*.hdf5")))
    np.testing.assert_array_equal(back.marginal_at(30), dense.marginal_at(30).astype(np.float32))
    assert (tmp_path / "out_flux" / "flux.nc").exists()
