"""``birdflow tune``: set up the bilevel problem, run the outer loop, save the tuned model.

The tune run dir holds ``config.yaml``, ``run.json`` (status, why the loop ended, θ),
``tuning_tracks.csv`` / ``validation_tracks.csv`` (the bird split), ``trajectory.csv`` (every
evaluated θ: :mod:`birdflow.tuning.search`), ``tuning.png`` and ``model/``: the model at the
θ with the lowest *tuning* loss, saved as an ordinary run dir (whose run.json points
evaluation at the validation birds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from birdflow.data.tracks import load_tracks
from birdflow.errors import BirdFlowError, ConfigError, DataError
from birdflow.model import markov
from birdflow.model.neighbours import summary
from birdflow.runs import read_run_info, resume_config, write_config, write_run_info
from birdflow.synthetic import ensure_synthetic, load_or_preprocess
from birdflow.training.checkpoint import resume_from
from birdflow.training.loop import AfterTraining, build_index
from birdflow.training.settings import validate_train_config
from birdflow.tuning import hypergrad, inner, likelihood, newton, penalty, search
from birdflow.tuning.kernel_form import KernelForm
from birdflow.tuning.settings import TuneSettings, tune_settings
from birdflow.tuning.split import split_birds, write_tracks_subset
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


def _tracks_path(cfg: DictConfig) -> tuple[str, str | None]:
    """The tracks CSV (``tracks=`` or ``species.tracks``; synthetic: its true tracks) and truth."""
    path = cfg.get("tracks") or cfg.species.get("tracks")
    truth = None
    if cfg.species.code == "synthetic":
        files = ensure_synthetic(cfg.species, Path(cfg.data.root) / "synthetic")
        path, truth = path or str(files.tracks), str(files.truth)
    if not path:
        raise ConfigError(f"species={cfg.species.code}: no tracks to tune on; set species.tracks "
                          "in the species config or pass tracks=<csv with bird_id,date,lat,lon>")
    if not Path(path).is_file():  # before any preprocessing: fail fast on a wrong path
        raise DataError(f"{path}: tracks CSV not found; pass tracks=<csv with columns "
                        "bird_id,date,lat,lon> or set species.tracks")
    return str(path), truth


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
        loss_cfg = _w2_for_tuning(loss_cfg, ts)
    tracks_csv, truth = _tracks_path(cfg)
    if cfg.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
    tune_dir = _tune_dir(cfg)
    if cfg.get("resume") and read_run_info(tune_dir).get("status") == "finished":
        log.info("%s already finished; nothing to do", tune_dir)
        traj = read_csv(tune_dir / TRAJECTORY_CSV)
        theta = np.array(read_run_info(tune_dir)["theta"])
        return TuneResult(tune_dir, tune_dir / MODEL_DIR, theta, traj)
    if data is None:  # the grid as train chooses it (res_km null: the sparse model's budget)
        ds, data_path = load_or_preprocess(cfg.species, cfg.data,
                                           (cfg.get("model") or {}).get("neighbourhood_km"))
    else:
        ds, data_path = data, "<in memory>"
    tracks = load_tracks(tracks_csv, ds)
    split = split_birds(tracks.intervals, int(cfg.seed), ts.tuning_fraction,
                        min_intervals=ts.min_intervals, source=tracks_csv)
    tune_dir.mkdir(parents=True, exist_ok=True)
    write_config(tune_dir, cfg)
    write_tracks_subset(tracks.rows, split.tuning_birds, tune_dir / "tuning_tracks.csv")
    write_tracks_subset(tracks.rows, split.validation_birds, tune_dir / "validation_tracks.csv")
    write_run_info(tune_dir, kind="tune", species=cfg.species.code, loss=loss_cfg.location,
                   data_path=str(data_path), tracks=tracks_csv, truth=truth, status="running",
                   n_tuning_birds=len(split.tuning_birds),
                   n_validation_birds=len(split.validation_birds),
                   n_tuning_intervals=len(split.tuning), n_validation_intervals=len(split.validation))

    index = build_index(cfg, ds)  # dense, or sparse as model.neighbourhood_km / neighbours_k ask
    if index.sparse:
        log.info(summary(index))
    write_run_info(tune_dir, n_max=int(index.n_max), parameters=int(index.n_parameters()))
    prob = inner.Inner.build(ds, loss_cfg, dtype, index)
    batch = likelihood.make_batch(split.tuning, index)
    val_batch = likelihood.make_batch(split.validation, index)
    k_lag, k_val = batch.max_lag, val_batch.max_lag

    fit_penalty = penalty.make_fit_penalty(index, prob.problem.targets, ts.fit_penalty)

    def outer_loss(params):  # the tuning birds' negative mean ll (+ the optional S&T-fit penalty)
        return -likelihood.mean_log_likelihood(params, index, batch, k_lag) + fit_penalty(params)[0]

    val_ll = jax.jit(lambda p: likelihood.mean_log_likelihood(p, index, val_batch, k_val))
    free = np.array([n in ts.free for n in inner.THETA_NAMES])
    lo = np.array([ts.bounds[n][0] for n in inner.THETA_NAMES])
    hi = np.array([ts.bounds[n][1] for n in inner.THETA_NAMES])
    theta0 = np.clip(_start_theta(loss_cfg, ts.start), lo, hi)
    if ts.init == "st":
        params = inner.st_init(ds, index, dtype)
    else:
        params = markov.init_params(jax.random.PRNGKey(int(cfg.seed)), index, dtype)
    space = prob
    if ts.inner.form == "kernel":  # fit one potential per cell and week (tuning.kernel_form)
        space = KernelForm(prob)
        params = space.start(prob.problem.targets if ts.init == "st"
                             else markov.marginals(params, index)[0], params["z0"], theta0)
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    state = {"theta": f(theta0), "params": params, "loss_state": prob.init_state(),
             "v": jax.tree_util.tree_map(jnp.zeros_like, params),
             "B": f(np.eye(len(theta0))), "radius": f(ts.descent.radius), "loss": f(np.inf),
             "grad": f(np.zeros(len(theta0))), "damping": f(ts.solve.damping),
             "best": {"theta": f(theta0), "params": params, "loss": f(np.inf)}}
    state = jax.tree_util.tree_map(jnp.asarray, state)
    start, state, traj = resume_from(tune_dir, state, cfg.get("resume"))
    if start:
        log.info("resuming %s from outer step %d", tune_dir, start)
    min_cor = jax.jit(lambda p: jnp.min(fit_penalty(p)[1]))
    loss_se = float(likelihood.mean_standard_error(  # at the start: what the birds can resolve
        space.logits(params, jnp.asarray(theta0, dtype)), index, batch, k_lag))
    write_run_info(tune_dir, tuning_loss_se=loss_se)
    parts = search.Parts(
        fit=newton.make_newton(space, ts.inner, ts.solve.hvp, ts.solve.fd_step),
        implicit=hypergrad.make_implicit(space, outer_loss, ts.solve), outer=jax.jit(outer_loss),
        monitors=(val_ll, min_cor), space=space, loss_se=loss_se,
        unrolled=(hypergrad.make_unrolled(space, outer_loss, ts.unroll_steps, ts.unroll_lr)
                  if ts.hypergradient == "unrolled" else None))
    log.info("tune %s/%s: %d tuning birds (%d intervals), %d validation birds (%d) -> %s",
             cfg.species.code, loss_cfg.location, len(split.tuning_birds), len(split.tuning),
             len(split.validation_birds), len(split.validation), tune_dir)
    stopped, ended = _run(cfg, ts, parts, state, traj, start, free, lo, hi, tune_dir)
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


def _start_theta(loss_cfg, start: dict) -> np.ndarray:
    """θ to start from: the loss config's weights, replaced by ``tune.start`` where given."""
    theta = inner.theta_from_config(loss_cfg)
    for i, key in enumerate(("dist_weight", "ent_weight", "dist_pow", "w2_scale")):
        if key in start:
            theta[i] = float(start[key]) if key == "dist_pow" else np.log(float(start[key]))
    return theta


def _w2_for_tuning(loss_cfg, ts: TuneSettings):
    """W2 as tuning needs it: full Sinkhorn solves to ``tune.w2_threshold`` every evaluation,
    differentiated implicitly through the optimality conditions with all weeks in one vmap —
    the mode whose forward-over-reverse Hessian-vector products are exact."""
    w2 = replace(loss_cfg.w2, iterations_per_step=None, grad_mode="implicit", week_batch=0)
    if ts.w2_threshold:
        w2 = replace(w2, threshold=min(w2.threshold, ts.w2_threshold))
    return replace(loss_cfg, w2=w2)


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
