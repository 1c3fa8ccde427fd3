"""Loss weights that mean the same at every resolution, the gain over the S&T null every run
reports, and ``weights=<tune dir>``."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata
from omegaconf import OmegaConf

from birdflow.errors import ConfigError
from birdflow.losses.objective import (
    LossConfig,
    effective_cells,
    make_problem,
    objective,
)
from birdflow.model import markov


@pytest.fixture(scope="module")
def tiny():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, seed=3)
    index = markov.WeekIndex.from_bfdata(ds)
    params = markov.init_params(jax.random.PRNGKey(0), index)
    return ds, index, params


def test_effective_cells_counts_cells_of_an_even_week():
    s = np.zeros((2, 10))
    s[0, :4] = 0.25
    s[1] = 0.1
    assert effective_cells(s) == pytest.approx((4 + 10) / 2)


def test_scaled_l2_is_birdflowpy_l2_times_the_effective_cells(tiny):
    ds, index, params = tiny
    kappa = effective_cells(ds["distr"].values)
    cells = LossConfig(dist_weight=0.02, ent_weight=0.003, l2_norm="cells")
    plain = LossConfig(dist_weight=0.02, ent_weight=0.003, l2_norm="plain", obs_weight=kappa)
    tc, (terms_c, _) = objective(params, make_problem(ds, index, cells), index, cells, {}, 0)
    tp, (terms_p, _) = objective(params, make_problem(ds, index, plain), index, plain, {}, 0)
    assert float(terms_c["obs"]) == float(terms_p["obs"]) == float(terms_c["l2"])  # plain L2
    assert float(tc) == pytest.approx(float(tp), rel=1e-6)
    by_hand = (kappa * terms_c["l2"] + 0.02 * terms_c["dist"] - 0.003 * terms_c["ent"])
    assert float(tc) == pytest.approx(float(by_hand), rel=1e-6)
    w2 = LossConfig(location="w2", l2_norm="cells")  # W2 has its own units: no factor
    assert float(make_problem(ds, index, w2).l2_scale) == 1.0
    # a loss config without the key (a run saved before it existed) is BirdFlowPy's objective
    assert LossConfig.from_mapping({"location": "l2", "obs_weight": 1.0}).l2_norm == "plain"


def test_scaled_l2_is_the_same_at_every_resolution():
    """The same two maps (a blob and the blob moved 60 km) rasterised at 100, 50 and 20 km:
    the plain L2 falls with the cell count, times the effective cells it does not."""
    def blob(res, shift_km):
        c = np.arange(-1500 + res / 2, 1500, res)
        x, y = np.meshgrid(c, c)
        d = np.exp(-((x - shift_km) ** 2 + y**2) / (2 * 400.0**2))
        return (d / d.sum()).ravel()

    plain, scaled = [], []
    for res in (100, 50, 20):
        s, mu = blob(res, 0.0), blob(res, 60.0)
        plain.append(np.sum((mu - s) ** 2))
        scaled.append(plain[-1] * effective_cells(s[None]))
    assert plain[0] / plain[2] == pytest.approx((100 / 20) ** 2, rel=1e-3)  # falls as 1/n
    np.testing.assert_allclose(scaled, scaled[0], rtol=1e-5)


def test_recorded_weights_are_birdflowr_weights(tiny, tmp_path):
    """The run records (and exports) the obs_weight of BirdFlowPy's plain objective."""
    import h5py

    from birdflow.export import export_birdflowr
    from birdflow.model.fitted import BirdFlowModel
    from birdflow.training.loop import recorded_weights

    ds, index, params = tiny
    kappa = effective_cells(ds["distr"].values)
    hp = recorded_weights(ds, LossConfig(obs_weight=2.0, dist_weight=0.02, ent_weight=0.003,
                                         l2_norm="cells"))
    assert hp["obs_weight"] == pytest.approx(2.0 * kappa) and hp["l2_scale"] == pytest.approx(kappa)
    assert hp["l2_norm"] == "cells" and hp["dist_weight"] == 0.02 and hp["ent_weight"] == 0.003
    assert recorded_weights(ds, LossConfig(l2_norm="plain"))["obs_weight"] == 1.0
    _, M = markov.marginals(params, index)
    model = BirdFlowModel(data=ds, index=index, marginals=np.asarray(M, np.float64),
                          hyperparameters={**hp, "learning_rate": 0.1, "training_steps": 1,
                                           "rng_seed": 0, "location_loss": "l2"},
                          loss_history={k: np.zeros(1) for k in ("total", "obs", "dist", "ent")})
    path = export_birdflowr(model, tmp_path / "m.hdf5")
    with h5py.File(path, "r") as f:
        assert f["metadata/hyperparameters/obs_weight"][()] == pytest.approx(2.0 * kappa)


def test_st_init_starts_training_at_the_s_and_t_maps(tiny):
    from birdflow.training.loop import init_params

    ds, index, _ = tiny
    cfg = OmegaConf.create({"model": {"init": "st"}, "seed": 0})
    mu, _ = markov.marginals(init_params(cfg, ds, index, jnp.float32), index)
    np.testing.assert_allclose(np.asarray(mu), index.slot_values(ds["distr"].values),
                               atol=1e-6)
    cfg = OmegaConf.create({"model": {"init": "zeros"}, "seed": 0})
    with pytest.raises(ConfigError, match=r"model\.init=.zeros.*random.*st"):
        init_params(cfg, ds, index, jnp.float32)


def _train_cfg(tmp_path, *overrides):
    from omegaconf import open_dict

    from birdflow import api

    cfg = api.config("train", [
        f"run_dir={tmp_path / 'run'}", "progress=false", "tensorboard=false", "maps=false",
        f"data.root={tmp_path / 'data'}", "species.synthetic.size=0.5",
        "species.synthetic.n_tracks=20", "optim.steps=20", *overrides])
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_every_run_reports_its_gain_over_the_null(tmp_path, capsys, caplog):
    """Printed and in run.json, evaluated or not: evaluation's figure on the same intervals."""
    from birdflow import api
    from birdflow.evaluation.evaluate import evaluate_model
    from birdflow.evaluation.gain import gain_over_null
    from birdflow.runs import run_path
    from birdflow.training.loop import train

    with caplog.at_level(logging.WARNING, logger="birdflow"):  # a negative gain is a warning
        res = train(_train_cfg(tmp_path, "evaluate=false"), after=api.after_training)
    out = capsys.readouterr().out + caplog.text
    info = json.loads((res.run_dir / "run.json").read_text())
    gain = info["gain_over_null"]
    tracks = run_path(res.run_dir, "tracks")  # stored relative to the run dir (its copy)
    summary = evaluate_model(res.model, tracks, w2=False, win_prob=False)["summary"]
    assert gain["gain"] == pytest.approx(summary["mean_ll_gain"], rel=1e-12)
    assert gain["n_intervals"] == summary["n_intervals"] > 0
    assert gain["gain"] == pytest.approx(summary["mean_ll"] - summary["mean_null_ll"], rel=1e-9)
    assert f"gain over the S&T null: {gain['gain']:+.3f} nats per interval" in out
    assert gain_over_null(res.run_dir, res.model, summary)["gain"] == summary["mean_ll_gain"]


def test_a_negative_gain_is_one_warning_line(tmp_path, caplog):
    from birdflow.evaluation.gain import report_gain

    (tmp_path / "run.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="birdflow"):
        line = report_gain(tmp_path, {"gain": -4.828, "mean_ll": -8.927, "mean_null_ll": -4.099,
                                      "n_intervals": 5109, "tracks": "tracks.csv"})
    assert [r.getMessage() for r in caplog.records] == [line] and "\n" not in line
    assert "-4.828" in line and "birdflow tune" in line and "weights=<tune dir>" in line
    assert json.loads((tmp_path / "run.json").read_text())["gain_over_null"]["gain"] == -4.828


def _fake_tune(tmp_path, loss="l2", l2_norm="cells", theta=(-5.0, -3.0, 1.2, 0.5)):
    """A tune dir as birdflow tune leaves it: run.json (kind, loss, θ), model/config.yaml."""
    d = tmp_path / "tune"
    (d / "model").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"kind": "tune", "species": "synthetic", "loss": loss,
                                            "status": "finished", "theta": list(theta)}))
    loss_cfg = {"location": loss, "obs_weight": 1.0, "dist_weight": 1.0, "ent_weight": 1.0,
                "dist_pow": 1.0, "w2": {"scale": 1.0}}
    if l2_norm is not None:
        loss_cfg["l2_norm"] = l2_norm
    (d / "model" / "config.yaml").write_text(OmegaConf.to_yaml({"loss": loss_cfg}))
    (d / "model" / "run.json").write_text(json.dumps({"tuned_by": str(d)}))
    return d


def test_read_weights_of_a_tune_dir_and_its_model(tmp_path):
    from birdflow.tuning.tunedir import read_weights

    d = _fake_tune(tmp_path)
    for path in (d, d / "model"):
        w = read_weights(path, "l2")
        assert w["dist_weight"] == pytest.approx(np.exp(-5.0))
        assert w["ent_weight"] == pytest.approx(np.exp(-3.0))
        assert w["dist_pow"] == 1.2 and w["l2_norm"] == "cells" and "w2_scale" not in w
    old = _fake_tune(tmp_path / "old", l2_norm=None)  # tuned before loss.l2_norm: plain L2
    assert read_weights(old)["l2_norm"] == "plain"
    w2 = _fake_tune(tmp_path / "w2", loss="w2")
    assert read_weights(w2, "w2")["w2_scale"] == pytest.approx(np.exp(0.5))
    with pytest.raises(ConfigError, match=r"a tune of loss=w2, but this run has loss=l2"):
        read_weights(w2, "l2")
    with pytest.raises(ConfigError, match=r"not a tune dir"):
        read_weights(tmp_path)
    with pytest.raises(ConfigError, match=r"no such directory"):
        read_weights(tmp_path / "nowhere")


def test_train_weights_takes_the_tunes_theta(tmp_path):
    from birdflow.api import apply_weights

    d = _fake_tune(tmp_path, l2_norm=None)
    cfg = apply_weights(_train_cfg(tmp_path, f"weights={d}"))
    assert cfg.loss.dist_weight == pytest.approx(np.exp(-5.0)) and cfg.loss.dist_pow == 1.2
    assert cfg.loss.l2_norm == "plain"
    with pytest.raises(ConfigError, match=r"hyper\.de_ratio/obs_prop"):
        apply_weights(_train_cfg(tmp_path, f"weights={d}", "hyper.de_ratio=2", "hyper.obs_prop=0.99"))
