"""Training loop: config validation, run dir contents, marginals after training, kill + resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, make_tiny_bfdata
from hydra import compose, initialize_config_dir

from birdflow.errors import ConfigError
from birdflow.training.loop import train


def make_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={tmp_path}", "progress=false", "tensorboard=true",
                                           "evaluate=false", "maps=false", "optim.steps=30",
                                           "checkpoint_every=10", *overrides])


@pytest.fixture(scope="module")
def data():
    return make_tiny_bfdata(n_rows=3, n_cols=4, seed=3)


@pytest.mark.parametrize("override, key", [
    ("loss.obs_weight=-1", "loss.obs_weight"),
    ("loss.dist_weight=-0.1", "loss.dist_weight"),
    ("optim.steps=0", "optim.steps"),
    ("optim.learning_rate=0", "optim.learning_rate"),
    ("loss.location=l1", "loss.location"),
])
def test_bad_config_fails_before_any_work(tmp_path, override, key):
    cfg = make_cfg(tmp_path / "run", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg, data="must not be touched")
    assert not (tmp_path / "run").exists()


def test_bad_epsilon_names_key(tmp_path):
    cfg = make_cfg(tmp_path / "run", "loss=w2", "loss.w2.epsilon=0")
    with pytest.raises(ConfigError, match=r"loss\.w2\.epsilon"):
        train(cfg, data=None)


@pytest.mark.parametrize("loss", ["l2", "w2"])
def test_train_writes_run_dir_and_consistent_marginals(tmp_path, data, loss):
    cfg = make_cfg(tmp_path, f"loss={loss}")
    res = train(cfg, data=data)
    for name in ("config.yaml", "run.json", "model.nc", "data.nc", "loss_history.csv"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tb").iterdir()), "TensorBoard scalars written"
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "finished" and info["loss"] == loss
    hist = res.history
    assert len(hist["total"]) == 30 and np.all(np.isfinite(hist["total"]))
    assert hist["total"][-1] < hist["total"][0]
    m = res.model
    mus = m.distrs()
    np.testing.assert_allclose(mus.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(mus[~data["dynamic_mask"].values] == 0), "no mass outside dynamic masks"
    for t in range(m.n_transitions):
        M = m.marginals[t]
        nxt = m.distr_at(t + 1)
        np.testing.assert_allclose(m._scatter(t + 1, M.sum(axis=0)), nxt, atol=1e-6)


def test_kill_and_resume_gives_same_result(tmp_path, data):
    ref = train(make_cfg(tmp_path / "ref"), data=data)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path / "killed", "debug.raise_after_step=17"), data=data)
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert info["status"] == "running" and info["steps_done"] == 10
    res = train(make_cfg(tmp_path / "killed", "resume=true"), data=data)
    np.testing.assert_array_equal(res.model.marginals, ref.model.marginals)
    np.testing.assert_array_equal(res.history["total"], ref.history["total"])


def test_w2_implicit_mode_trains_when_sinkhorn_converges(tmp_path, data):
    res = train(make_cfg(tmp_path, "loss=w2", "loss.w2.grad_mode=implicit", "loss.w2.epsilon=0.05",
                         "optim.steps=10"), data=data)
    assert np.all(np.isfinite(res.history["total"]))
    assert max(res.history["sinkhorn_iterations"]) < 2000


def test_divergence_guard_stops_with_clear_message(tmp_path, data):
    from birdflow.training.loop import TrainingDiverged

    # a learning rate this large drives logits to overflow in float32 within a few steps
    cfg = make_cfg(tmp_path, "optim.learning_rate=1e38", "optim.steps=20", "checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match=r"non-finite.*last good checkpoint.*step_"):
        train(cfg, data=data)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "running" and (tmp_path / "checkpoints").exists()
