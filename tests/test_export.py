"""BirdFlowR HDF5 export/import: the real sstspa file round-trips, our models round-trip,
malformed files fail with the path inside the file."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest
from conftest import REPO, make_tiny_bfdata, run_command

from birdflow.cli.export import main
from birdflow.errors import ConfigError, DataError
from birdflow.export import default_filename, export_birdflowr, import_birdflowr
from birdflow.model import markov
from birdflow.model.fitted import BirdFlowModel, load_model, save_model

HYPER = {"obs_weight": 1.0, "ent_weight": 0.01, "dist_weight": 0.05, "dist_pow": 0.9,
         "learning_rate": 0.1, "training_steps": 4, "rng_seed": 3, "location_loss": "w2"}


def tiny_model(n_weeks: int = 52, seed: int = 0) -> BirdFlowModel:
    """A fresh copy of a cached tiny model (random logits; building one compiles JAX code)."""
    return copy.deepcopy(_tiny_model(n_weeks, seed))


@functools.cache
def _tiny_model(n_weeks: int, seed: int) -> BirdFlowModel:
    ds = make_tiny_bfdata(n_weeks=n_weeks, seed=seed)
    index = markov.WeekIndex.from_bfdata(ds)
    params = markov.init_params(jax.random.PRNGKey(seed), index)
    _, M = markov.marginals(params, index)
    rng = np.random.default_rng(seed)
    losses = {k: rng.random(4) for k in ("total", "obs", "dist", "ent", "l2", "w2")}
    return BirdFlowModel(data=ds, index=index, marginals=np.asarray(M, np.float64),
                         hyperparameters=dict(HYPER), loss_history=losses)


def tree(f: h5py.File) -> dict:
    items = {}
    f.visititems(lambda key, obj: items.__setitem__(key, obj))
    return items


def assert_same_dataset(key: str, a: h5py.Dataset, b: h5py.Dataset) -> None:
    assert a.shape == b.shape, key
    assert a.dtype == b.dtype, key
    assert a.id.get_type().equal(b.id.get_type()), f"{key}: HDF5 type (string pad/cset/enum)"
    va, vb = a[()], b[()]
    if a.dtype.names:  # compound: field by field
        assert a.dtype.names == b.dtype.names, key
        for name in a.dtype.names:
            assert va[name].dtype == vb[name].dtype, f"{key}.{name}"
            assert np.array_equal(va[name], vb[name]), f"{key}.{name}"
    elif a.dtype.kind == "f":
        assert np.array_equal(va, vb, equal_nan=True), key
    else:
        assert np.array_equal(va, vb), key
    assert sorted(a.attrs) == sorted(b.attrs), key
    for name in a.attrs:
        xa, xb = np.asarray(a.attrs[name]), np.asarray(b.attrs[name])
        assert xa.dtype == xb.dtype and np.array_equal(xa, xb), f"{key} @{name}"


@pytest.mark.shared
def test_sstspa_reexport_reproduces_every_dataset(sstspa_hdf5, tmp_path):
    model = import_birdflowr(sstspa_hdf5)
    out = export_birdflowr(model, tmp_path / "sstspa.hdf5")
    with h5py.File(sstspa_hdf5, "r") as fa, h5py.File(out, "r") as fb:
        ta, tb = tree(fa), tree(fb)
        # No allowed differences: birdflow_model_date and the other metadata are kept from
        # the import (the fit is the same); distances are absent from fitted files anyway.
        assert sorted(ta) == sorted(tb)
        assert "version" not in fb
        for key, obj in ta.items():
            if isinstance(obj, h5py.Dataset):
                assert_same_dataset(key, obj, tb[key])
        assert len(ta) == 115  # 52 marginals + 63 other groups and datasets in the real file


@pytest.mark.shared
def test_sstspa_numpy_api(sstspa_hdf5):
    model = import_birdflowr(sstspa_hdf5)
    with h5py.File(sstspa_hdf5, "r") as f:
        stored = f["distr"][()]
        m52 = f["marginals/Week52_to_53"][()]
    ds = model.data
    assert model.cyclic and model.n_transitions == 52 and model.n_cells == 68
    assert np.array_equal(ds["distr"].values, stored[:, :52].T)  # bit for bit
    assert np.array_equal(model.marginal_at(51), m52.astype(np.float64))
    assert ds.attrs["species_code"] == "sstspa" and ds.attrs["common_name"] == "Saltmarsh Sparrow"
    # Saltmarsh Sparrow lives on the US Atlantic and Gulf coasts
    assert -84 < ds["cell_lon"].min() and ds["cell_lon"].max() < -66
    assert np.allclose(model.distrs().sum(axis=1), 1.0, atol=1e-5)
    for t in (0, 20, 51):
        P = model.transition_at(t)
        live = model.distr_at(t) > 0
        assert np.allclose(P[live].sum(axis=1), 1.0, atol=1e-5)
    fc = model.forecast_at(ds["distr"].values[10], t_from=10, n_steps=52)
    assert fc.shape == (53, 68) and np.allclose(fc.sum(axis=1), 1.0, atol=1e-5)
    assert model.hyperparameters["obs_weight"] == 1.0 and model.hyperparameters["normalized"]
    assert {k: len(v) for k, v in model.loss_history.items()} == dict.fromkeys(
        ("dist", "ent", "obs", "total"), 600)


def test_tiny_model_round_trip(tmp_path):
    model = tiny_model()
    out = export_birdflowr(model, tmp_path / "m.hdf5")
    back = import_birdflowr(out)
    assert back.cyclic and back.index.n_transitions == 52
    for t in range(52):
        assert np.array_equal(back.marginal_at(t), model.marginal_at(t).astype(np.float32)), t
        assert np.array_equal(back.transition_at(t), model.transition_at(t)), t
    assert np.array_equal(back.distrs(), model.distrs())
    for name in ("distr", "dynamic_mask", "static_mask", "cell_x", "cell_y", "x", "y"):
        assert np.array_equal(back.data[name].values, model.data[name].values), name
    assert np.allclose(back.data["cell_lon"].values, model.data["cell_lon"].values)
    assert np.array_equal(back.data["date"].values, model.data["date"].values)
    assert back.hyperparameters == {**HYPER, "normalized": True}
    for k, v in model.loss_history.items():
        assert np.array_equal(back.loss_history[k], v), k
    from birdflow.evaluation.evaluate import evaluate_model

    # W2 (Sinkhorn) and win_prob are skipped for speed; they read the same marginals
    kwargs = {"w2": False, "win_prob": False}
    assert evaluate_model(back, **kwargs) == evaluate_model(model, **kwargs)


def test_layout_matches_birdflowr_conventions(tmp_path):
    model = tiny_model()
    out = export_birdflowr(model, tmp_path / "m.hdf5")
    n = model.data["dynamic_mask"].values.sum(axis=1)
    with h5py.File(out, "r") as f:
        assert "version" not in f
        for key in ("geom/mask", "geom/dynamic_mask", "metadata/has_distr", "metadata/is_sparse",
                    "metadata/has_marginals", "metadata/has_transitions", "transitions"):
            assert f[key].dtype == np.int8 and f[key].attrs["storage.mode"] == b"logical", key
        assert f["geom/mask"].shape == (4, 5)
        distr, dm = f["distr"][()], f["geom/dynamic_mask"][()]
        assert distr.shape == dm.shape == (19, 53)
        assert np.array_equal(distr[:, 52], distr[:, 0]) and np.array_equal(dm, distr > 0)
        dates = f["dates"][()]
        assert dates.dtype.names == ("timestep", "date", "label", "julian", "week")
        assert dates["timestep"][-1] == 53 and dates["date"][-1] == dates["date"][0]
        assert dates["date"][0] == b"2022-01-04" and dates["label"][0] == b"January 4"
        assert f["marginals/Week52_to_53"].shape == (n[51], n[0])
        assert f["marginals/Week52_to_53"].dtype == np.float32
        assert len(f["marginals"]) == 52
        for key in ("ext", "res", "nrow", "ncol"):
            assert f[f"geom/{key}"].dtype == np.float64
        # grid: x centres 5e4 + 1e5 k, y centres 3.5e6 - 1e5 k (make_tiny_bfdata)
        assert f["geom/ext"][()].tolist() == [0.0, 5e5, 3.55e6 - 4e5, 3.55e6]
        md = f["metadata"]
        assert [int(md[k][0]) for k in ("n_active", "n_timesteps", "n_transitions",
                                        "timestep_padding")] == [19, 52, 52, 2]
        assert md["birdflow_version"][()].tolist() == [3.0]
        assert md["hyperparameters/location_loss"][()] == b"w2"
        assert md["hyperparameters/training_steps"].dtype == np.int64
        assert {len(v) for v in md["loss_values"].values()} == {4}
        assert len(f["species"]) == 15 and f["species/species_code"][()].tolist() == [b"tiny"]
        assert np.isnan(f["species/breeding_quality"][0])


def test_truncated_model_round_trip(tmp_path):
    model = tiny_model(n_weeks=10, seed=1)
    assert not model.cyclic
    out = export_birdflowr(model, tmp_path / "t.hdf5")
    with h5py.File(out, "r") as f:
        assert f["distr"].shape[1] == 10 and len(f["dates"]) == 10 and len(f["marginals"]) == 9
    back = import_birdflowr(out)
    assert not back.cyclic and back.n_transitions == 9
    assert all(np.array_equal(back.marginal_at(t), model.marginal_at(t)) for t in range(9))


def test_r_reexported_layout_is_read(tmp_path):
    """The layout written by R after import_birdflow(): M_aa-bb names, an index, 52 columns."""
    model = tiny_model(seed=2)
    out = export_birdflowr(model, tmp_path / "r.hdf5")
    with h5py.File(out, "r+") as f:
        for t in range(1, 53):
            f.move(f"marginals/Week{t}_to_{t + 1}", f"marginals/M_{t:02d}-{t % 52 + 1:02d}")
        f["marginals"].create_dataset("index", data=np.zeros(2, dtype=[("from", "<i4")]))
        for key in ("distr", "geom/dynamic_mask", "dates"):
            data, attrs = f[key][()], dict(f[key].attrs)
            del f[key]
            f.create_dataset(key, data=data[..., :52] if data.ndim == 2 else data[:52])
            f[key].attrs.update(attrs)
    back = import_birdflowr(out)
    assert back.cyclic
    assert all(np.array_equal(back.marginal_at(t), model.marginal_at(t)) for t in range(52))


def corrupt(tmp_path, edit) -> str:
    out = export_birdflowr(tiny_model(), tmp_path / "bad.hdf5")
    with h5py.File(out, "r+") as f:
        edit(f)
    return out


def _wrong_marginal(f):
    del f["marginals/Week3_to_4"]
    f.create_dataset("marginals/Week3_to_4", data=np.zeros((2, 2), np.float32))


def _version(v):
    def edit(f):
        f["metadata/birdflow_version"][0] = v
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["geom"].__delitem__("mask"), "missing /geom/mask - not a BirdFlowR model"),
    (lambda f: f.__delitem__("species"), "missing /species -"),
    (_wrong_marginal, "/marginals/Week3_to_4 has shape (2, 2)"),
    (lambda f: f.create_dataset("version", data=[1]), "root /version found - a version 1"),
    (_version(2), "/metadata/birdflow_version is 2.0, only version 3"),
    (lambda f: f.__delitem__("marginals"), "no /marginals - a preprocessed (unfitted)"),
    (lambda f: f["distr"].__setitem__((0, 52), 0.5), "/distr column 53 should repeat column 1"),
])
def test_malformed_files_name_the_path(tmp_path, edit, message):
    bad = corrupt(tmp_path, edit)
    with pytest.raises(DataError, match=re.escape("bad.hdf5: " + message)):
        import_birdflowr(bad)


def test_not_hdf5_and_bad_losses(tmp_path):
    (tmp_path / "x.hdf5").write_text("not hdf5")
    with pytest.raises(DataError, match="x.hdf5: not an HDF5 file"):
        import_birdflowr(tmp_path / "x.hdf5")
    model = tiny_model()
    model.loss_history["obs"] = np.zeros(3)
    with pytest.raises(DataError, match="different lengths"):
        export_birdflowr(model, tmp_path / "y.hdf5")
    assert not (tmp_path / "y.hdf5").exists() and not list(tmp_path.glob(".y.hdf5*"))
    model.hyperparameters.pop("dist_pow")
    with pytest.raises(ConfigError, match="dist_pow"):
        default_filename(model)


def test_cli_export_and_import(tmp_path, capsys):
    model = tiny_model()
    run = tmp_path / "run"
    save_model(model, run)
    (run / "run.json").write_text(json.dumps({"species": "tiny", "loss": "w2", "seed": 3}))
    assert run_command(main, [f"run={run}"]) == 0
    name = "tiny_2022_100km_obs1.0_ent0.01_dist0.05_pow0.9.hdf5"
    assert capsys.readouterr().out.strip() == str(run / name)
    assert run_command(main, [f"hdf5={run / name}", f"out={tmp_path / 'imported'}"]) == 0
    again = load_model(tmp_path / "imported")
    assert np.array_equal(again.marginals, load_model(run).marginals)
    assert json.loads((tmp_path / "imported" / "run.json").read_text())["loss"] == "w2"
    # the reloaded import keeps species/metadata attrs, so a second export is identical
    second = export_birdflowr(again, tmp_path / "second.hdf5")
    with h5py.File(run / name, "r") as fa, h5py.File(second, "r") as fb:
        for key, obj in tree(fa).items():
            if isinstance(obj, h5py.Dataset):
                assert_same_dataset(key, obj, fb[key])
    assert run_command(main, ["run"]) == 2 and "run" in capsys.readouterr().err


def test_python_m_entry_point(tmp_path):
    run = tmp_path / "run"
    save_model(tiny_model(), run)
    out = tmp_path / "cli.hdf5"
    proc = subprocess.run([sys.executable, "-m", "birdflow.export", f"run={run}", f"out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and import_birdflowr(out).n_transitions == 52


def test_naming_and_types_from_a_training_config(tmp_path):
    """Integer weights from a YAML config are still written as float64; run_dir= names the file."""
    model = tiny_model()
    model.hyperparameters.update(obs_weight=1, dist_pow=1)
    model.data.attrs.update(common_name="Tiny Bird", breeding_quality=2)
    out = export_birdflowr(model, run_dir=tmp_path)
    assert out == tmp_path / "tiny_2022_100km_obs1.0_ent0.01_dist0.05_pow1.0.hdf5"
    with h5py.File(out, "r") as f:
        hp = f["metadata/hyperparameters"]
        assert hp["obs_weight"].dtype == hp["dist_pow"].dtype == np.float64
        assert hp["rng_seed"].dtype == np.int64 and hp["normalized"][()] is np.True_
        assert f["species/common_name"][()].tolist() == [b"Tiny Bird"]
        assert f["species/common_name"].dtype == "S9"
        assert f["species/breeding_quality"][()].tolist() == [2.0]
