"""What a tune dir holds besides checkpoints: the trajectory, its plot and the final model.

``<tune dir>/trajectory.csv`` (θ, losses, hypergradient, solve statistics per outer step),
``tuning.png`` and ``model/``: the lowest-tuning-loss θ's inner solution as an ordinary run dir
that evaluate, routes, maps and export read unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from birdflow.io import write_text_atomic
from birdflow.training.checkpoint import latest_checkpoint, load_checkpoint
from birdflow.training.loop import finish_run
from birdflow.training.rundir import CONFIG_YAML, read_run_info, write_run_info
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
    write_text_atomic(model_dir / CONFIG_YAML, OmegaConf.to_yaml(mcfg, resolve=True))
    write_run_info(model_dir, species=cfg.species.code, loss=loss_cfg.location,
                   data_path=str(read_run_info(tune_dir).get("data_path")), seed=int(cfg.seed),
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
