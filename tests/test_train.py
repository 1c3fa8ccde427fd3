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
    cfg = make_cfg(tmp_path / "run", "loss=w2", "loss.w2.epsilon_cells=0")
    with pytest.raises(ConfigError, match=r"loss\.w2\.epsilon_cells"):
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
    assert m.cyclic and m.n_transitions == m.index.n_weeks
    dyn = data["dynamic_mask"].values
    for t in range(m.n_transitions - 1):  # column sums of M_t = row sums of M_{t+1}
        arrive = m._scatter(t + 1, m.marginals[t].sum(axis=0))
        np.testing.assert_allclose(arrive, m._scatter(t + 1, m.marginals[t + 1].sum(axis=1)),
                                   atol=1e-6, err_msg=f"transition {t}")
    # Week 52 -> 1: the arrival is week 52's distribution pushed through the dense transition
    # (laid out on week 1's cells), a distribution on week 1's dynamic mask. It is fitted to,
    # not constrained to equal, the week-1 start distribution (a chain, not a stationary cycle).
    last = m.n_transitions - 1
    arrive = m._scatter(0, m.marginals[last].sum(axis=0))
    np.testing.assert_allclose(arrive, m.distr_at(last) @ m.transition_at(last), atol=1e-6)
    assert arrive.sum() == pytest.approx(1.0, abs=1e-5) and np.all(arrive[~dyn[0]] == 0)


def test_kill_and_resume_gives_same_result(tmp_path, data):
    ref = train(make_cfg(tmp_path / "ref"), data=data)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path / "killed", "debug.raise_after_step=17"), data=data)
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert info["status"] == "running" and info["steps_done"] == 10
    res = train(make_cfg(tmp_path / "killed", "resume=true"), data=data)
    np.testing.assert_array_equal(res.model.marginals, ref.model.marginals)
    np.testing.assert_array_equal(res.history["total"], ref.history["total"])


def test_w2_implicit_mode_trains_like_danskin_when_sinkhorn_converges(tmp_path, data):
    """Converged solves (threshold 1e-6): implicit and envelope gradients agree, so both runs
    follow the same path; no implicit solve fell back and no solve stopped unconverged."""
    runs = {mode: train(make_cfg(tmp_path / mode, "loss=w2", f"loss.w2.grad_mode={mode}",
                                 "loss.w2.epsilon_cells=0.65", "loss.w2.threshold=1e-6",
                                 "loss.w2.iterations_per_step=null", "optim.steps=10"), data=data)
            for mode in ("implicit", "danskin")}
    imp, dan = runs["implicit"].history, runs["danskin"].history
    assert imp["total"][-1] < imp["total"][0]
    np.testing.assert_allclose(imp["total"], dan["total"], rtol=1e-4)
    np.testing.assert_allclose(runs["implicit"].model.marginals, runs["danskin"].model.marginals,
                               atol=1e-4)
    assert max(imp["n_fallback"]) == 0 and max(imp["n_unconverged"]) == 0


def test_unconverged_sinkhorn_is_counted_warned_or_stops(tmp_path, data, caplog):
    """Too few iterations for epsilon 0.0013 one-cell costs: every step reports unconverged
    week-solves."""
    from birdflow.training.loop import SinkhornNotConverged

    few = ("loss=w2", "loss.w2.epsilon_cells=0.0013", "loss.w2.max_iterations=10", "optim.steps=3",
           "loss.w2.iterations_per_step=null")  # every step a convergence-checked solve
    with caplog.at_level("WARNING", logger="birdflow.training.loop"):
        res = train(make_cfg(tmp_path / "warn", *few), data=data)
    n = res.history["n_unconverged"]
    n_weeks = res.model.index.n_weeks
    assert len(n) == 3 and all(1 <= k <= 3 * (n_weeks + 1) for k in n)
    assert "did not converge" in caplog.text
    csv = (tmp_path / "warn" / "loss_history.csv").read_text().splitlines()[0].split(",")
    assert "n_unconverged" in csv
    with pytest.raises(SinkhornNotConverged, match=r"step 0: \d+ W2 week-solve.*loss\.w2\.max_iterations"):
        train(make_cfg(tmp_path / "stop", *few, "loss.w2.on_unconverged=stop"), data=data)


def test_bad_on_unconverged_names_the_key(tmp_path):
    cfg = make_cfg(tmp_path / "run", "loss=w2", "loss.w2.on_unconverged=ignore")
    with pytest.raises(ConfigError, match=r"loss\.w2\.on_unconverged"):
        train(cfg, data=None)


def test_divergence_guard_stops_with_clear_message(tmp_path, data):
    from birdflow.training.loop import TrainingDiverged

    # a learning rate this large drives logits to overflow in float32 within a few steps
    cfg = make_cfg(tmp_path, "optim.learning_rate=1e38", "optim.steps=20", "checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match=r"non-finite.*last good checkpoint.*step_"):
        train(cfg, data=data)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "failed" and "non-finite" in info["error"]  # resumable all the same
    assert (tmp_path / "checkpoints").exists()
