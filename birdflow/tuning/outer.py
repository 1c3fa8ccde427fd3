"""The outer loop of ``birdflow tune``: Adam on θ with bounds, a resumable tune run dir.

Each outer step refits the inner problem from the previous solution until it is stationary,
computes the hypergradient (implicit by default) and takes one Adam step on the free
components of θ, projected onto their bounds. The tune run dir holds ``config.yaml``,
``run.json``, ``tuning_tracks.csv`` / ``validation_tracks.csv`` (the bird split),
``trajectory.csv`` (θ, outer loss, hypergradient and costs per outer step), ``tuning.png``
and ``model/``: the model at the θ with the lowest *tuning* loss, saved as an ordinary run dir
(whose run.json points evaluation at the validation birds).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import DictConfig, OmegaConf

from birdflow.data.tracks import load_tracks
from birdflow.errors import BirdFlowError, ConfigError, DataError
from birdflow.io import write_text_atomic
from birdflow.model import markov
from birdflow.model.neighbours import summary
from birdflow.synthetic import ensure_synthetic, load_or_preprocess
from birdflow.training.checkpoint import (
    resume_from,
    save_checkpoint,
)
from birdflow.training.loop import AfterTraining, build_index
from birdflow.training.rundir import CONFIG_YAML, read_run_info, write_history_csv, write_run_info
from birdflow.training.settings import validate_train_config
from birdflow.tuning import hypergrad, inner, likelihood, penalty
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
    d = Path(str(cfg.resume))
    if not (d / CONFIG_YAML).exists():
        raise ConfigError(f"resume={d}: no {CONFIG_YAML} there; pass a tune dir written by "
                          "`python -m birdflow.tune`")
    old = OmegaConf.load(d / CONFIG_YAML)
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
    if loss_cfg.location == "w2":  # FD HVPs need accurate W2 gradients: full solves
        loss_cfg = replace(loss_cfg, w2=replace(loss_cfg.w2, iterations_per_step=None))
    if loss_cfg.location == "w2" and ts.w2_threshold:
        loss_cfg = replace(loss_cfg, w2=replace(loss_cfg.w2, threshold=min(
            loss_cfg.w2.threshold, ts.w2_threshold)))
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
    ds, data_path = (data, "<in memory>") if data is not None else load_or_preprocess(cfg.species,
                                                                                     cfg.data)
    tracks = load_tracks(tracks_csv, ds)
    split = split_birds(tracks.intervals, int(cfg.seed), ts.tuning_fraction,
                        min_intervals=ts.min_intervals, source=tracks_csv)
    tune_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(tune_dir / CONFIG_YAML, OmegaConf.to_yaml(cfg, resolve=True))
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
    optimizer = optax.adam(ts.learning_rate, b1=ts.b1, b2=ts.b2)
    if ts.init == "st":
        params = inner.st_init(ds, index, dtype)
    else:
        params = markov.init_params(jax.random.PRNGKey(int(cfg.seed)), index, dtype)
    state = {"theta": jnp.asarray(theta0, dtype), "opt_state": optimizer.init(jnp.asarray(theta0, dtype)),
             "params": params, "loss_state": prob.init_state(),
             "v": jax.tree_util.tree_map(jnp.zeros_like, params),
             "best": {"theta": jnp.asarray(theta0, dtype), "params": params,
                      "loss": jnp.asarray(np.inf, dtype)}}
    state = jax.tree_util.tree_map(jnp.asarray, state)
    start, state, traj = resume_from(tune_dir, state, cfg.get("resume"))
    if start:
        log.info("resuming %s from outer step %d", tune_dir, start)
    min_cor = jax.jit(lambda p: jnp.min(fit_penalty(p)[1]))
    fit = inner.make_fitter(prob, ts.inner)
    implicit = hypergrad.make_implicit(prob, outer_loss, ts.solve)
    unrolled = (hypergrad.make_unrolled(prob, outer_loss, ts.unroll_steps, ts.unroll_lr)
                if ts.hypergradient == "unrolled" else None)
    log.info("tune %s/%s: %d tuning birds (%d intervals), %d validation birds (%d) -> %s",
             cfg.species.code, loss_cfg.location, len(split.tuning_birds), len(split.tuning),
             len(split.validation_birds), len(split.validation), tune_dir)
    stopped = _outer(cfg, ts, state, traj, start, fit, implicit, unrolled, outer_loss,
                     (val_ll, min_cor), optimizer, free, lo, hi, tune_dir)
    best = state_best = load_best(tune_dir, state)
    if not np.isfinite(float(best["loss"])):
        write_run_info(tune_dir, status="failed", message=stopped)
        raise TuningStopped(f"{tune_dir}: {stopped}; no hyperparameters were evaluated")
    traj = read_csv(tune_dir / TRAJECTORY_CSV)
    model_dir = save_model(cfg, tune_dir, ds, index, loss_cfg, opt, state_best, traj, truth,
                            after)
    write_run_info(tune_dir, status="stopped" if stopped else "finished", message=stopped,
                   model=str(model_dir), theta=np.asarray(best["theta"]).tolist())
    plot(traj, tune_dir / "tuning.png")
    if stopped:
        raise TuningStopped(f"{stopped}; the last good θ and its model are kept in {model_dir}")
    print(f"tune dir: {tune_dir}\nmodel run dir: {model_dir}")
    return TuneResult(tune_dir, model_dir, np.asarray(best["theta"]), traj, stopped)


def _start_theta(loss_cfg, start: dict) -> np.ndarray:
    """θ to start from: the loss config's weights, replaced by ``tune.start`` where given."""
    theta = inner.theta_from_config(loss_cfg)
    for i, key in enumerate(("dist_weight", "ent_weight", "dist_pow", "w2_scale")):
        if key in start:
            theta[i] = float(start[key]) if key == "dist_pow" else np.log(float(start[key]))
    return theta


def _outer(cfg, ts: TuneSettings, state, traj, start, fit, implicit, unrolled, outer_loss, monitors,
           optimizer, free, lo, hi, tune_dir) -> str:
    """Run outer steps ``start..ts.steps``; returns '' or the reason it stopped early.

    ``monitors`` = (validation mean ll, weakest weekly S&T correlation), functions of the logits.
    """
    val_ll, min_cor = monitors
    from tqdm.auto import tqdm

    t0 = time.perf_counter() - (traj["time_s"][-1] if traj.get("time_s") else 0.0)
    bar = tqdm(range(start, ts.steps + 1), initial=start, total=ts.steps + 1,
               disable=not cfg.progress, desc=f"tune {cfg.species.code}/{cfg.loss.location}",
               unit="outer", dynamic_ncols=True)
    message = ""
    damping = traj["damping"][-1] if traj.get("damping") else ts.solve.damping
    try:
        for step in bar:
            theta = state["theta"]
            max_steps = ts.first_max_steps if step == 0 else ts.inner.max_steps
            res = fit(state["params"], theta, state["loss_state"], max_steps)
            state["params"], state["loss_state"] = res.params, res.state
            log.info("outer step %d: inner fit %d steps, |grad| %.3g, L_in %.6g", step, res.steps,
                     res.grad_norm, res.loss)
            h = _solve(implicit, res, theta, state, damping, ts.solve.max_damping, step)
            if h.ok and h.damping != damping:  # the hypergradient's scale goes with 1/λ: restart
                state["opt_state"] = optimizer.init(theta)  # Adam's moments at the new scale
                log.info("outer step %d: Adam's moments restarted for damping %.0e", step, h.damping)
            damping = h.damping
            log.info("outer step %d: L_out %.5f, CG %d steps, residual %.2g, hypergradient %s",
                     step, h.outer_loss, h.cg_steps, h.residual, np.round(h.grad, 5).tolist())
            grad = h.grad
            if unrolled is not None and h.ok:
                grad = np.asarray(unrolled(res.params, theta, res.state), float)
            grad = np.where(free, grad, 0.0)
            ok = h.ok and np.all(np.isfinite(grad)) and np.isfinite(h.outer_loss)
            if not ok:
                message = (f"outer step {step}: " + (h.message or f"non-finite hypergradient "
                           f"{grad.tolist()}") + f" at θ = {np.asarray(theta).round(4).tolist()}")
                break
            if not res.converged:
                log.warning("outer step %d: inner fit stopped at gradient norm %.3g > gtol %.3g "
                            "after %d steps; the hypergradient assumes stationarity",
                            step, res.grad_norm, ts.inner.gtol, res.steps)
            state["v"] = h.v
            if h.outer_loss < float(state["best"]["loss"]):
                state["best"] = {"theta": theta, "params": res.params,
                                 "loss": jnp.asarray(h.outer_loss, theta.dtype)}
            row = {"step": step, **{n: float(x) for n, x in zip(inner.THETA_NAMES, np.asarray(theta),
                                                                  strict=True)},
                   "outer_loss": h.outer_loss, "validation_ll": float(val_ll(res.params)),
                   "min_distr_cor": float(min_cor(res.params)),
                   "hypergrad_norm": float(np.linalg.norm(grad)),
                   **{f"grad_{n}": float(g) for n, g in zip(inner.THETA_NAMES, grad, strict=True)},
                   "inner_steps": res.steps, "inner_grad_norm": res.grad_norm,
                   "inner_loss": res.loss, "cg_steps": h.cg_steps, "cg_residual": h.residual,
                   "damping": h.damping,
                   "best_outer_loss": float(state["best"]["loss"]),
                   "time_s": time.perf_counter() - t0}
            for k, v in row.items():
                traj.setdefault(k, []).append(v)
            bar.set_postfix({"L_out": f"{h.outer_loss:.4f}", "|g|": f"{row['hypergrad_norm']:.3g}",
                             "θ": np.asarray(theta).round(2).tolist()})
            if step < ts.steps:  # the last row only evaluates the final θ
                updates, state["opt_state"] = optimizer.update(jnp.asarray(grad, theta.dtype),
                                                               state["opt_state"])
                state["theta"] = jnp.clip(optax.apply_updates(theta, updates), lo, hi)
            save_checkpoint(tune_dir, step + 1, state, traj)
            write_history_csv(tune_dir, traj)
            (tune_dir / "loss_history.csv").replace(tune_dir / TRAJECTORY_CSV)
    finally:
        bar.close()
    if message:
        log.error(message)
    return message


def _solve(implicit, res, theta, state, damping: float, max_damping: float, step: int):
    """The hypergradient at the inner solution; a failed (finite) CG solve is retried from zero
    with 10x the damping while that stays <= ``max_damping``; the raised damping is kept for the
    following outer steps (it is recorded in the trajectory and survives a resume)."""
    h = implicit(res.params, theta, res.state, state["v"], damping)
    while not h.ok and np.all(np.isfinite(h.grad)) and damping * 10 <= max_damping * (1 + 1e-9):
        log.warning("outer step %d: %s; retrying with tune.solve.damping %.0e -> %.0e",
                    step, h.message, damping, damping * 10)
        damping *= 10
        h = implicit(res.params, theta, res.state, None, damping)
    return h
