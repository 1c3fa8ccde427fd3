"""Sparsify (issue 14 item 2): BirdFlowR's methods, a consistent chain, export round trip."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from test_export import assert_same_dataset, tiny_model, tree

from birdflow.errors import ConfigError
from birdflow.export import export_birdflowr, import_birdflowr
from birdflow.model.sparsify import METHODS, density, find_threshold, fix_dead_ends, sparsify


def test_find_threshold_golden():
    # by hand: sorted 0.5, 0.3, 0.15, 0.05; cumulative 0.5, 0.8, 0.95 -> 0.15 keeps 95% >= 90%
    assert find_threshold(np.array([0.05, 0.3, 0.0, 0.5, 0.15]), 0.9) == 0.15
    assert find_threshold(np.array([0.05, 0.3, 0.0, 0.5, 0.15]), 0.8) == 0.3  # exactly 80%
    assert find_threshold(np.array([0.05, 0.3, 0.5, 0.15]), 1.0) == 0.05


def test_fix_dead_ends_on_a_hand_chain():
    # 3 transitions (truncated), 2 slots: cell 1 of week 2 receives mass but leads nowhere
    M = np.zeros((3, 2, 2))
    M[0] = [[0.5, 0.2], [0.3, 0.0]]
    M[1] = [[0.8, 0.0], [0.0, 0.0]]  # row 1 (cell 1 of week 2) empty: a dead end
    M[2] = [[0.6, 0.4], [0.0, 0.0]]
    fixed, passes = fix_dead_ends(M, cyclic=False)
    assert fixed[0, :, 1].sum() == 0.0 and passes == 2
    np.testing.assert_array_equal(fixed[1:], M[1:])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_keeps_a_consistent_chain(method):
    model = tiny_model()
    sparse, stats = sparsify(model, method, p=0.9)
    M = sparse.marginals
    np.testing.assert_allclose(M.sum(axis=(1, 2)), 1.0, atol=1e-12)
    for t in range(51):  # week t+1 seen from both joints is one distribution
        np.testing.assert_allclose(M[t].sum(axis=0), M[t + 1].sum(axis=1), atol=1e-12)
    assert stats["density_before"] == 1.0 and stats["density_after"] == density(sparse) < 1.0
    assert stats["pct_density_lost"] > 0
    if method != "conditional":  # the threshold keeps >= p of the mass before dead-end fixing
        unfixed = sparsify(model, method, p=0.9, fix=False)[1]["pct_density_lost"]
        assert 9.0 < unfixed <= 10.0 + 1e-9 and stats["pct_density_lost"] >= unfixed
    assert (M[model.marginals == 0] == 0).all()  # never adds entries
    # no dead ends: every cell with mass in a week has mass onward
    for t in range(52):
        incoming, onward = M[t].sum(axis=0), M[(t + 1) % 52].sum(axis=1)
        assert not np.any((incoming > 0) & (onward <= 0))
    sparse.route(20, 1, 52, from_marginals=True, seed=0)  # a full year without a dead end


def test_conditional_protects_the_top_entries_of_every_row():
    model = tiny_model()
    sparse, _ = sparsify(model, "conditional", p=0.5, p_protected=0.3, fix=False)
    for t in (0, 30):
        k = model.marginal_at(t).shape[1]
        kept = (sparse.marginal_at(t) > 0).sum(axis=1)
        assert (kept >= np.ceil(0.3 * k)).all()


def test_sparse_export_round_trips(tmp_path):
    sparse, stats = sparsify(tiny_model(), "marginal")
    out = export_birdflowr(sparse, tmp_path / "sparse.hdf5")
    with h5py.File(out, "r") as f:
        assert f["metadata/is_sparse"][0] == 1
        assert json.loads(f["metadata/sparse"][0].decode())["method"] == "marginal"
    back = import_birdflowr(out)
    np.testing.assert_array_equal(back.marginals > 0, sparse.marginals.astype(np.float32) > 0)
    np.testing.assert_allclose(back.marginals, sparse.marginals, rtol=1e-6, atol=1e-12)
    assert json.loads(back.data.attrs["sparse"]) == stats
    again = export_birdflowr(back, tmp_path / "again.hdf5")
    with h5py.File(out, "r") as fa, h5py.File(again, "r") as fb:
        for key, obj in tree(fa).items():
            if isinstance(obj, h5py.Dataset) and key != "metadata/birdflow_model_date":
                assert_same_dataset(key, obj, tree(fb)[key])


def test_unknown_method_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"method='dense': unknown; use one of \['model'") as e:
        sparsify(tiny_model(), "dense")
    assert "\n" not in str(e.value)


@pytest.mark.shared
def test_sstspa_sparsifies_and_reexports_with_the_v3_layout(sstspa_hdf5, tmp_path):
    model = import_birdflowr(sstspa_hdf5)
    sparse, stats = sparsify(model, "conditional")
    assert stats["density_after"] < 0.6 and stats["pct_density_lost"] < 5
    out = export_birdflowr(sparse, tmp_path / "sstspa_sparse.hdf5")
    changed = {f"marginals/Week{t}_to_{t + 1}" for t in range(1, 53)} | {
        "metadata/is_sparse", "metadata/sparse"}
    with h5py.File(sstspa_hdf5, "r") as fa, h5py.File(out, "r") as fb:
        ta, tb = tree(fa), tree(fb)
        assert sorted(ta) == sorted(tb) and len(tb) == 115 and "version" not in fb
        for key, obj in ta.items():
            if not isinstance(obj, h5py.Dataset):
                continue
            if key in changed:  # same storage, new values
                b = tb[key]
                assert (obj.shape, obj.dtype.kind, sorted(obj.attrs)) == (
                    b.shape, b.dtype.kind, sorted(b.attrs)), key
            else:
                assert_same_dataset(key, obj, tb[key])
        assert fb["metadata/is_sparse"][0] == 1
        assert fb["metadata/is_sparse"].attrs["storage.mode"] == b"logical"
    back = import_birdflowr(out)
    assert np.count_nonzero(back.marginals) == np.count_nonzero(sparse.marginals)


def test_sparsify_command_reports_and_writes_a_sparse_run(tmp_path, capsys):
    from conftest import run_command

    from birdflow.cli.sparsify import main
    from birdflow.model.fitted import load_model, save_model

    run = tmp_path / "run"
    save_model(tiny_model(), run)
    table = main([f"run={run}", "score=false"])
    assert table["model"].tolist() == ["full", *METHODS]
    assert table["density"].iloc[0] == 1.0 and (table["density"].iloc[1:] < 1).all()
    assert "pct_density_lost" in capsys.readouterr().out
    main([f"run={run}", "method=conditional", f"out={tmp_path / 'sparse'}", "score=false"])
    sparse = load_model(tmp_path / "sparse")
    assert json.loads(sparse.data.attrs["sparse"])["method"] == "conditional"
    assert "sparse (conditional, p=0.99)" in repr(sparse)
    assert json.loads((tmp_path / "sparse" / "run.json").read_text())["sparsified_from"] == str(run)
    assert run_command(main, [f"run={run}", "method=dense"]) == 2
    assert "unknown sparsify method" in capsys.readouterr().err
