"""``birdflow tune``: set up the bilevel problem, run the outer loop, save the tuned model.

The tune run dir holds ``config.yaml``, ``run.json`` (status, why the loop ended, θ),
``tuning_tracks.csv`` / ``validation_tracks.csv`` (the bird split), ``trajectory.csv`` (every
evaluated θ: :mod:`birdflow.tuning.search`), ``tuning.png`` and ``model/``: the model at the
θ with the lowest *tuning* loss, saved as an ordinary run dir (whose run.json points
evaluation at the validation birds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from birdflow.errors import BirdFlowError
from birdflow.runs import read_run_info, resume_config, write_config, write_run_info
from birdflow.training.checkpoint import resume_from
from birdflow.training.loop import AfterTraining
from birdflow.training.settings import validate_train_config
from birdflow.tuning import problem, search
from birdflow.tuning.problem import tracks_path, w2_for_tuning
from birdflow.tuning.settings import tune_settings
from birdflow.tuning.split import write_tracks_subset
from birdflow.tuning.tunedir import (  # noqa: F401  (MODEL_DIR, TRAJECTORY_CSV re-exported)
    MODEL_DIR,
    TRAJECTORY_CSV,
    load_best,
    plot,
    read_csv,
    save_model,
)

log = logging.getLogger("birdflow.tuning.outer")


class TuningStopped(BirdFlowError):
    """The outer loop stopped early (failed linear solve, non-finite hypergradient)."""


@dataclass
class TuneResult:
    tune_dir: Path
    model_dir: Path | None
    theta: np.ndarray
    trajectory: dict[str, list]
    stopped: str = ""


def _tune_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _resumed(cfg: DictConfig) -> DictConfig:
    if not cfg.get("resume") or cfg.resume is True:
        return cfg
    d, old = resume_config(cfg.resume, "tune dir written by `birdflow tune`")
    old.run_dir, old.resume = str(d), True
    return old


def tune(cfg: DictConfig, data=None, after: AfterTraining | None = None) -> TuneResult:
    """Tune θ as configured (``conf/tune.yaml``); returns the tune dir, θ and trajectory.

    ``after`` is passed to the final model's save (metrics, figures; see
    :func:`birdflow.api.after_training`).
    """
    cfg = _resumed(cfg)
    loss_cfg, opt = validate_train_config(cfg)
    ts = tune_settings(cfg.get("tune"), loss_cfg.location)
    if loss_cfg.location == "w2":
        loss_cfg = w2_for_tuning(loss_cfg, ts)
    tracks_csv, truth = tracks_path(cfg)
    if cfg.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
    tune_dir = _tune_dir(cfg)
    if cfg.get("resume") and read_run_info(tune_dir).get("status") == "finished":
        info, traj = read_run_info(tune_dir), read_csv(tune_dir / TRAJECTORY_CSV)
        done = int(np.sum(traj["accepted"])) - 1  # accepted outer steps (step 0 is the start)
        if not (str(info.get("ended", "")).startswith("stopped after tune.steps")
                and ts.steps > done):
            log.info("%s already finished; nothing to do", tune_dir)
            return TuneResult(tune_dir, tune_dir / MODEL_DIR, np.array(info["theta"]), traj)
        log.info("%s stopped at its step cap (%d); going on to tune.steps = %d", tune_dir, done,
                 ts.steps)
    ds, data_path, tracks, split = problem.load_split(cfg, ts, tracks_csv, data)
    tune_dir.mkdir(parents=True, exist_ok=True)
    write_config(tune_dir, cfg)
    write_tracks_subset(tracks.rows, split.tuning_birds, tune_dir / "tuning_tracks.csv")
    write_tracks_subset(tracks.rows, split.validation_birds, tune_dir / "validation_tracks.csv")
    write_run_info(tune_dir, kind="tune", species=cfg.species.code, loss=loss_cfg.location,
                   data_path=str(data_path), tracks=tracks_csv, truth=truth, status="running",
                   n_tuning_birds=len(split.tuning_birds),
                   n_validation_birds=len(split.validation_birds),
                   n_tuning_intervals=len(split.tuning), n_validation_intervals=len(split.validation))

    sp = problem.build(cfg, ts, loss_cfg, ds, split, dtype)
    index, space, parts, params, theta0 = sp.index, sp.space, sp.parts, sp.params, sp.theta0
    write_run_info(tune_dir, n_max=int(index.n_max), parameters=int(index.n_parameters()),
                   tuning_loss_se=parts.loss_se)
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    state = {"theta": f(theta0), "params": params, "loss_state": sp.prob.init_state(),
             "v": jax.tree_util.tree_map(jnp.zeros_like, params),
             "B": f(np.eye(len(theta0))), "radius": f(ts.descent.radius), "loss": f(np.inf),
             "grad": f(np.zeros(len(theta0))), "damping": f(ts.solve.damping),
             "best": {"theta": f(theta0), "params": params, "loss": f(np.inf)}}
    state = jax.tree_util.tree_map(jnp.asarray, state)
    start, state, traj = resume_from(tune_dir, state, cfg.get("resume"))
    if start:
        log.info("resuming %s from outer step %d", tune_dir, start)
    log.info("tune %s/%s: %d tuning birds (%d intervals), %d validation birds (%d) -> %s",
             cfg.species.code, loss_cfg.location, len(split.tuning_birds), len(split.tuning),
             len(split.validation_birds), len(split.validation), tune_dir)
    stopped, ended = _run(cfg, ts, parts, state, traj, start, sp.free, sp.lo, sp.hi,
                           tune_dir)
    best = state_best = load_best(tune_dir, state)
    state_best = {**best, "params": space.logits(best["params"], jnp.asarray(best["theta"]))}
    if not np.isfinite(float(best["loss"])):
        write_run_info(tune_dir, status="failed", message=stopped)
        raise TuningStopped(f"{tune_dir}: {stopped}; no hyperparameters were evaluated")
    traj = read_csv(tune_dir / TRAJECTORY_CSV)
    model_dir = save_model(cfg, tune_dir, ds, index, loss_cfg, opt, state_best, traj, truth,
                            after)
    write_run_info(tune_dir, status="stopped" if stopped else "finished", message=stopped,
                   ended=ended, model=str(model_dir), theta=np.asarray(best["theta"]).tolist())
    plot(traj, tune_dir / "tuning.png")
    if stopped:
        raise TuningStopped(f"{stopped}; the last good θ and its model are kept in {model_dir}")
    print(f"{ended}\ntune dir: {tune_dir}\nmodel run dir: {model_dir}")
    return TuneResult(tune_dir, model_dir, np.asarray(best["theta"]), traj, stopped)


def _run(cfg, ts, parts, state, traj, start, free, lo, hi, tune_dir) -> tuple[str, str]:
    """The outer loop with a progress bar; returns (failure message or '', why it ended)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=ts.steps, initial=max(start - 1, 0), disable=not cfg.progress,
               desc=f"tune {cfg.species.code}/{cfg.loss.location}", unit="outer",
               dynamic_ncols=True)

    def progress(step, trial, loss, theta, accepted):
        bar.set_postfix({"L_out": f"{loss:.4f}", "trial": trial,
                         "θ": np.asarray(theta).round(2).tolist()})
        if accepted:
            bar.update(1)

    try:
        stopped, ended = search.run(ts, parts, state, traj, start, free, lo, hi, tune_dir,
                                    progress)
    finally:
        bar.close()
    if stopped:
        log.error(stopped)
    else:
        log.info(ended)
    return stopped, ended
