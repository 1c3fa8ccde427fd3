"""What a tune dir holds besides checkpoints: the trajectory, its plot and the final model.

``<tune dir>/trajectory.csv`` (θ, losses, hypergradient, solve statistics per outer step),
``tuning.png`` and ``model/``: the lowest-tuning-loss θ's inner solution as an ordinary run dir
that evaluate, routes, maps and export read unchanged. ``run.json`` has ``kind: tune``, the
``loss`` and, once a θ was evaluated, ``theta`` (the best one; :data:`inner.THETA_NAMES`);
:func:`read_weights` turns that into ``loss.*`` values (``birdflow train weights=<tune dir>``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from birdflow.errors import ConfigError
from birdflow.losses.objective import LossConfig
from birdflow.runs import read_config, read_run_info, run_path, write_config, write_run_info
from birdflow.training.checkpoint import latest_checkpoint, load_checkpoint
from birdflow.training.loop import finish_run
from birdflow.tuning import inner

TRAJECTORY_CSV = "trajectory.csv"
MODEL_DIR = "model"


def load_best(tune_dir: Path, template) -> dict:
    ckpt = latest_checkpoint(tune_dir)
    if ckpt is None:
        return {"theta": template["theta"], "params": template["params"],
                "loss": jnp.asarray(np.inf)}
    return load_checkpoint(ckpt, template)[1]["best"]


def read_csv(path: Path) -> dict[str, list]:
    import pandas as pd

    return {k: list(v) for k, v in pd.read_csv(path).items()} if path.exists() else {}


def save_model(cfg, tune_dir, ds, index, loss_cfg, opt, best, traj, truth, after) -> Path:
    """The best θ's inner solution as an ordinary run dir under ``<tune dir>/model``."""
    model_dir = tune_dir / MODEL_DIR
    tuned = inner.config_from_theta(loss_cfg, np.asarray(best["theta"]))
    mcfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in ("dist_weight", "ent_weight", "dist_pow"):
        mcfg.loss[key] = getattr(tuned, key)
    if loss_cfg.location == "w2":
        mcfg.loss.w2.scale = tuned.w2.scale
    mcfg.run_dir, mcfg.resume = str(model_dir), None
    model_dir.mkdir(parents=True, exist_ok=True)
    write_config(model_dir, mcfg)
    write_run_info(model_dir, species=cfg.species.code, loss=loss_cfg.location,
                   data_path=run_path(tune_dir, "data_path"), seed=int(cfg.seed),
                   status="running", tracks=str(tune_dir / "validation_tracks.csv"), truth=truth,
                   tuned_by=str(tune_dir))
    steps = int(np.sum(traj["inner_steps"]))
    history = {"step": list(traj["step"]), "total": list(traj["inner_loss"]),
               "outer_loss": list(traj["outer_loss"]), "time_s": list(traj["time_s"])}
    finish_run(mcfg, model_dir, ds, index, best["params"], history, tuned, replace(opt, steps=steps),
            after)
    return model_dir


def plot(traj: dict, path: Path) -> None:
    """Outer loss (tuning and validation) and θ against the outer step; rejected trials as x."""
    from matplotlib.figure import Figure

    from birdflow.io import atomic_path

    step = np.asarray(traj["step"])
    acc = np.asarray(traj.get("accepted", np.ones(len(step))), bool)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    a, b = fig.subplots(1, 2)
    loss = np.asarray(traj["outer_loss"])
    a.plot(step[acc], loss[acc], "o-", label="tuning birds: −mean ll")
    a.plot(step[acc], -np.asarray(traj["validation_ll"])[acc], "s--",
           label="validation birds: −mean ll")
    if (~acc).any():
        a.plot(step[~acc], loss[~acc], "x", c="C3", label="rejected trial (tuning)")
    a.set(xlabel="outer step", ylabel="negative mean interval log-likelihood")
    a.legend()
    for n in inner.THETA_NAMES:
        if n in traj and np.ptp(np.asarray(traj[n])[acc]) > 0:
            b.plot(step[acc], np.asarray(traj[n])[acc], "o-", label=n)
    b.set(xlabel="outer step", ylabel="θ")
    if b.get_lines():
        b.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def read_weights(path: str | Path, location: str | None = None) -> dict:
    """The loss weights a tune found, as ``loss.*`` config values.

    Args:
        path: a tune dir, or its ``model/`` run dir.
        location: the location loss of the run that will use them (``l2``/``w2``); None
            accepts the tune's.

    Returns:
        {"location", "obs_weight", "dist_weight", "ent_weight", "dist_pow", "l2_norm"} and, for
        W2, "w2_scale"; also "tune_dir" and "species" (the tune's species code). dist/ent
        weights, dist_pow and the W2 scale come from the best θ in ``run.json``; obs_weight and
        l2_norm (what obs_weight multiplies) from ``model/config.yaml``: a tune that predates
        ``loss.l2_norm`` fitted BirdFlowPy's plain L2, so its weights come back with ``plain``.

    Raises:
        ConfigError: not a tune dir, a tune with no θ yet, or a tune of another location loss.
    """
    given = Path(path)
    tune_dir = given
    if not given.is_dir():
        raise ConfigError(f"weights={given}: no such directory; pass a tune dir "
                          "(outputs/<species>/tune_<loss>/<timestamp>, printed by birdflow tune)")
    info = read_run_info(given)
    if info.get("kind") != "tune" and info.get("tuned_by"):  # <tune dir>/model
        tune_dir = run_path(given, "tuned_by", info)
        if not tune_dir.exists():
            tune_dir = given.parent
        info = read_run_info(tune_dir)
    if info.get("kind") != "tune":
        raise ConfigError(f"weights={given}: not a tune dir (its run.json has no kind: tune); pass "
                          "the directory birdflow tune wrote, or its model/")
    if info.get("theta") is None:
        raise ConfigError(f"weights={given}: the tune has no θ yet (status {info.get('status')!r}); "
                          f"let it finish or continue it with birdflow tune resume={tune_dir}")
    if location is not None and info.get("loss") != location:
        raise ConfigError(f"weights={given}: a tune of loss={info.get('loss')}, but this run has "
                          f"loss={location}; add loss={info.get('loss')} or pass a tune of "
                          f"loss={location}")
    saved = read_config(tune_dir / MODEL_DIR)
    loss = OmegaConf.to_container(saved.loss) if saved is not None and "loss" in saved else {}
    base = LossConfig(location=str(info["loss"]), obs_weight=float(loss.get("obs_weight", 1.0)))
    tuned = inner.config_from_theta(base, np.asarray(info["theta"], dtype=float))
    out = {"location": tuned.location, "obs_weight": tuned.obs_weight,
           "dist_weight": tuned.dist_weight, "ent_weight": tuned.ent_weight,
           "dist_pow": tuned.dist_pow, "l2_norm": str(loss.get("l2_norm", "plain")),
           "tune_dir": str(tune_dir), "species": info.get("species")}
    if tuned.location == "w2":
        out["w2_scale"] = tuned.w2.scale
    return out
