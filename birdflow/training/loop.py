"""Fit the Markov chain (the loop behind ``birdflow train`` and ``bf.fit``).

:func:`train` takes a composed config; the command (:mod:`birdflow.train`) and the Python API
(:func:`birdflow.fit`) compose it and pass what a finished run should also write (metrics,
figures, exports) as the ``after`` callback, so training never imports evaluation.
One jitted update (value and gradient of the objective + Adam step) runs per step; the loss
components go to a progress bar, ``loss_history.csv`` and TensorBoard; checkpoints every
``checkpoint_every`` steps let ``resume`` continue a killed run to the same result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import DictConfig

from birdflow.errors import BirdFlowError
from birdflow.losses import blur
from birdflow.losses.objective import (
    LossConfig,
    init_loss_state,
    l2_scale,
    make_problem,
    objective,
)
from birdflow.model import markov
from birdflow.model.fitted import BirdFlowModel, save_model
from birdflow.model.neighbours import sparse_index, summary
from birdflow.runs import (
    adopt_inputs,
    check_unlocked,
    locked,
    read_run_info,
    record_failure,
    run_log,
    write_config,
    write_history_csv,
    write_run_info,
)
from birdflow.synthetic import ensure_synthetic, load_or_preprocess
from birdflow.training.checkpoint import latest_checkpoint, resume_from, save_checkpoint
from birdflow.training.memory import check_memory
from birdflow.training.resume import resumed_config
from birdflow.training.settings import ModelSettings, OptimSettings, validate_train_config

log = logging.getLogger("birdflow.training.loop")


AfterTraining = Callable[[DictConfig, Path, BirdFlowModel, dict], None]


class TrainingDiverged(BirdFlowError):
    """The loss or the parameters became non-finite."""


class SinkhornNotConverged(BirdFlowError):
    """A W2 Sinkhorn solve stopped at max_iterations and ``loss.w2.on_unconverged`` is stop."""


PERSISTENT_STEPS = 20  # W2 solves above their tolerance this many steps in a row stop the run


def check_convergence(terms: dict, step: int, loss_cfg: LossConfig, seen: dict,
                      unit: float = 1.0) -> None:
    """Warn about (first time, and on every new maximum) or stop on W2 week-solves that ended
    above their marginal-error tolerance; stop when that lasts :data:`PERSISTENT_STEPS` steps.

    ``seen`` carries what was warned about and the current unconverged streak between steps;
    ``unit`` is the normalised one-cell cost (``Problem.w2_unit``), for the message.
    """
    c = loss_cfg.w2
    n = int(terms.get("n_unconverged", 0))
    seen["streak"] = seen.get("streak", 0) + 1 if n > 0 else 0
    if n > 0 and (c.on_unconverged == "stop" or seen["streak"] >= PERSISTENT_STEPS):
        why = ("loss.w2.on_unconverged=stop" if c.on_unconverged == "stop" else
               f"{seen['streak']} steps in a row")
        raise SinkhornNotConverged(
            f"step {step}: {n} W2 week-solve(s) ended with L1 marginal error "
            f"{terms.get('sinkhorn_error', float('nan')):.2g} above the tolerance "
            f"(threshold {c.threshold:g}, error_tolerance {c.error_tolerance:g}) after "
            f"loss.w2.max_iterations={c.max_iterations} ({why}) at {blur.describe(c.epsilon_cells, unit)}; "
            f"raise loss.w2.epsilon_cells (>= {blur.MIXING_CELLS:g}, default 2) or loss.w2.max_iterations")
    if n > seen.get("n_unconverged", 0):
        seen["n_unconverged"] = n
        log.warning("step %d: %d W2 week-solve(s) did not converge: L1 marginal error %.2g above "
                    "their tolerance after loss.w2.max_iterations=%d at %s; their values and "
                    "gradients are approximate, and %d such steps in a row stop the run", step, n,
                    terms.get("sinkhorn_error", float("nan")), c.max_iterations,
                    blur.describe(c.epsilon_cells, unit), PERSISTENT_STEPS)
    if int(terms.get("n_extended", 0)) > 0 and not seen.get("n_extended"):
        seen["n_extended"] = True
        log.info("step %d: amortised Sinkhorn ran past loss.w2.iterations_per_step=%s to bring "
                 "the L1 marginal error below loss.w2.error_tolerance=%g (counted as n_extended)",
                 step, c.iterations_per_step, c.error_tolerance)
    fb = int(terms.get("n_fallback", 0))
    if fb > seen.get("n_fallback", 0):
        seen["n_fallback"] = fb
        log.warning("step %d: %d W2 implicit correction(s) not used (linear solve failed or L1 "
                    "marginal error above loss.w2.error_tolerance=%g); those weeks used the "
                    "envelope (danskin) gradient", step, fb, c.error_tolerance)


def sinkhorn_status(history: dict) -> dict:
    """run.json's account of the W2 solves of a run (empty for L2): steps with unconverged
    week-solves, with amortised solves extended past their budget, with implicit fallbacks,
    and the largest L1 marginal error logged over the last tenth of the run."""
    if "n_unconverged" not in history:
        return {}
    err = np.asarray(history.get("sinkhorn_error", [np.nan]), float)
    tail = err[-max(1, len(err) // 10):]
    return {"sinkhorn": {
        "steps_unconverged": int(np.sum(np.asarray(history["n_unconverged"]) > 0)),
        "steps_extended": int(np.sum(np.asarray(history.get("n_extended", [0])) > 0)),
        "steps_fallback": int(np.sum(np.asarray(history.get("n_fallback", [0])) > 0)),
        "max_error_last_tenth": float(np.nanmax(tail)) if np.isfinite(tail).any() else None}}


@dataclass
class RunResult:
    run_dir: Path
    model: BirdFlowModel
    history: dict[str, list]


def make_optimizer(opt: OptimSettings) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with the configured learning-rate schedule (optional linear warm-up)."""
    lr, n = opt.learning_rate, opt.steps
    decay_steps = max(n - opt.warmup_steps, 1)
    if opt.schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, decay_steps, alpha=opt.final_lr_fraction)
    elif opt.schedule == "exponential":
        sched = optax.exponential_decay(lr, decay_steps, opt.final_lr_fraction)
    else:
        sched = optax.constant_schedule(lr)
    if opt.warmup_steps:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, opt.warmup_steps), sched],
                                     [opt.warmup_steps])
    return optax.adam(sched, b1=opt.b1, b2=opt.b2), sched


def make_update(index: markov.WeekIndex, loss_cfg: LossConfig, optimizer):
    """The jitted training step: state -> (state, loss terms, all-finite flag)."""
    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def update(state, problem):
        (_, (terms, loss_state)), grads = value_and_grad(
            state["params"], problem, index, loss_cfg, state["loss_state"], state["step"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(terms["total"]) & jnp.all(jnp.array(
            [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]))
        new = {"params": params, "opt_state": opt_state, "loss_state": loss_state,
               "step": state["step"] + 1}
        return new, terms, finite

    return jax.jit(update, donate_argnums=(0,))


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _species_refs(cfg: DictConfig) -> dict:
    """Tracks and ground-truth references recorded in run.json for evaluation."""
    refs = {"tracks": cfg.get("tracks") or cfg.species.get("tracks"), "truth": None}
    if cfg.species.code == "synthetic":
        files = ensure_synthetic(cfg.species, Path(cfg.data.root) / "synthetic")
        refs = {"tracks": refs["tracks"] or str(files.tracks), "truth": str(files.truth)}
    return refs


def train(cfg: DictConfig, data=None, after: AfterTraining | None = None) -> RunResult:
    """Fit one model as configured; returns the run dir, fitted model and loss history.

    ``data`` (a BirdFlowData) skips preprocessing; by default the species config is
    preprocessed (or read from the cache). ``after(cfg, run_dir, model, history)`` runs once the
    model is saved and before run.json says ``finished`` (metrics, figures, exports).
    """
    cfg = resumed_config(cfg)  # resume=<dir>: that run's saved config
    loss_cfg, opt = validate_train_config(cfg)  # fails on bad values before any work
    if cfg.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
    run_dir = _run_dir(cfg)
    check_unlocked(run_dir)  # another training into this run dir: stop before any work
    info = read_run_info(run_dir)
    if cfg.get("resume") and info.get("status") == "finished" \
            and int(info.get("steps_done") or 0) >= opt.steps:
        log.info("%s already finished; nothing to do", run_dir)
        from birdflow.model.fitted import load_model

        model = load_model(run_dir)
        return RunResult(run_dir, model, {k: list(v) for k, v in model.loss_history.items()})

    if data is None:
        ds, data_path = load_or_preprocess(cfg.species, cfg.data,  # res_km null: sparse budget
                                           (cfg.get("model") or {}).get("neighbourhood_km"))
    else:
        ds, data_path = data, "<in memory>"
    index = build_index(cfg, ds)  # a radius that cuts off S&T mass fails before the run dir
    check_memory(index, float(ds.attrs.get("res_km", 100.0)), cfg.species,  # before allocating
                 jnp.dtype(dtype).itemsize)
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):  # a second training into this run dir stops here
        write_config(run_dir, cfg)
        refs = _species_refs(cfg)
        write_run_info(run_dir, species=cfg.species.code, loss=loss_cfg.location,
                       data_path=str(data_path), seed=int(cfg.seed), status="running",
                       **adopt_inputs(run_dir, refs["tracks"], refs["truth"]))
        try:
            return _fit(cfg, run_dir, ds, index, loss_cfg, opt, dtype, after)
        except SinkhornNotConverged:
            raise  # run.json says status stopped, and why
        except Exception as e:  # run.json says why (a kill or Ctrl-C leaves status running)
            record_failure(run_dir, e)
            raise


def _fit(cfg, run_dir, ds, index, loss_cfg, opt, dtype, after) -> RunResult:
    """Train into a locked run dir whose config and run.json are written."""
    with run_log(run_dir):  # <run>/train.log, whoever called train
        problem = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(
            jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a), make_problem(ds, index, loss_cfg))
        optimizer, schedule = make_optimizer(opt)
        params = init_params(cfg, ds, index, dtype)
        state = {"params": params, "opt_state": optimizer.init(params),
                 "loss_state": init_loss_state(problem, index, loss_cfg),
                 "step": jnp.asarray(0, jnp.int32)}
        state = jax.tree_util.tree_map(jnp.array, state)  # own buffers: the update donates them
        start, state, history = resume_from(run_dir, state, cfg.get("resume"))
        if start:
            log.info("resuming %s from step %d", run_dir, start)
        log.info("%s: %d cells, %d weeks, %d parameters, loss=%s, %d steps -> %s", cfg.species.code,
                 ds.sizes["cell"], index.n_weeks, index.n_parameters(), loss_cfg.location, opt.steps,
                 run_dir)
        _log_sizes(index, params, dtype)
        if loss_cfg.location == "l2" and loss_cfg.l2_norm == "cells":
            log.info("L2 term x %.4g, the effective cells per week (loss.l2_norm=cells): obs_weight "
                     "%g is BirdFlowR's %.4g", float(problem.l2_scale), loss_cfg.obs_weight,
                     loss_cfg.obs_weight * float(problem.l2_scale))
        update = make_update(index, loss_cfg, optimizer)
        params, history = _loop(cfg, update, state, problem, schedule, history, start, opt.steps,
                                run_dir, loss_cfg)
        return finish_run(cfg, run_dir, ds, index, params, history, loss_cfg, opt, after)


def _log_sizes(index: markov.WeekIndex, params: dict, dtype) -> None:
    """Log the logits' shape and the memory of one (T, n_max, K) array against dense."""
    item = jnp.dtype(dtype).itemsize
    mb, dense_mb = params["Z"].size * item / 1e6, index.n_transitions * index.n_max**2 * item / 1e6
    log.info(summary(index))
    log.info("transitions: %s, logits %s = %.1f MB in %s (the gradient, Adam's two moments and "
             "the joints M are as large again each); dense logits would be %.1f MB",
             "sparse" if index.sparse else "dense", tuple(params["Z"].shape), mb,
             jnp.dtype(dtype).name, dense_mb)


def init_params(cfg: DictConfig, ds, index: markov.WeekIndex, dtype) -> dict:
    """The logits training starts from: ``model.init`` st (the S&T null chain) or random."""
    if ModelSettings.from_mapping(cfg.get("model")).init == "st":
        return markov.st_init(ds, index, dtype)
    return markov.init_params(jax.random.PRNGKey(int(cfg.seed)), index, dtype)


def build_index(cfg: DictConfig, ds) -> markov.WeekIndex:
    """The slot layout of ``ds``: dense, or sparse as ``cfg.model`` asks (radius or k nearest)."""
    ms = ModelSettings.from_mapping(cfg.get("model"))
    if not ms.sparse:
        return markov.WeekIndex.from_bfdata(ds)
    radius = ms.radius_km(float(ds.attrs.get("res_km", 100.0)), cfg.species)
    return sparse_index(ds, radius_km=radius, k=ms.neighbours_k)


def _loop(cfg, update, state, problem, schedule, history, start, steps, run_dir, loss_cfg):
    from tqdm.auto import tqdm

    writer = None
    if cfg.tensorboard:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start)
    t0 = time.perf_counter() - (history["time_s"][-1] if history.get("time_s") else 0.0)  # resumed runs
    seen: dict = {}
    shown = ("total", "obs", "dist", "ent", "n_unconverged")
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not cfg.progress,
               desc=f"{cfg.species.code}/{cfg.loss.location}", unit="step", dynamic_ncols=True)
    try:
        for step in bar:
            try:
                state, terms, finite = update(state, problem)
            except jax.errors.JaxRuntimeError as e:  # e.g. a failed implicit-diff linear solve
                raise TrainingDiverged(
                    f"step {step}: the jitted update failed ({str(e).splitlines()[0][:200]}); "
                    f"last good checkpoint: {latest_checkpoint(run_dir) or 'none'}; for W2 try "
                    "loss.w2.grad_mode=danskin, a larger loss.w2.epsilon_cells or loss.w2.max_iterations"
                ) from e
            terms = {k: float(v) for k, v in jax.device_get(terms).items()}
            if not bool(finite):
                ck = latest_checkpoint(run_dir)
                raise TrainingDiverged(
                    f"step {step}: loss or parameters became non-finite (total={terms['total']}); "
                    f"last good checkpoint: {ck or 'none'}; lower optim.learning_rate or, for W2, raise "
                    "loss.w2.epsilon_cells")
            try:
                check_convergence(terms, step, loss_cfg, seen, float(problem.w2_unit))
            except SinkhornNotConverged as e:
                write_run_info(run_dir, status="stopped", reason=str(e), steps_done=step)
                raise
            row = {"step": step, **terms, "lr": float(schedule(step)), "time_s": time.perf_counter() - t0}
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if writer is not None:
                for k, v in terms.items():
                    writer.add_scalar(f"loss/{k}", v, step)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix({k: f"{terms[k]:.4g}" for k in shown if k in terms})
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == steps:
                save_checkpoint(run_dir, done, state, history)
                write_history_csv(run_dir, history)
                write_run_info(run_dir, steps_done=done)
            if cfg.debug.raise_after_step is not None and done >= cfg.debug.raise_after_step:
                raise KeyboardInterrupt(f"debug.raise_after_step={cfg.debug.raise_after_step}")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return state["params"], history


def recorded_weights(ds, loss_cfg: LossConfig) -> dict:
    """The weights a run records (model.nc, BirdFlowR export) in BirdFlowR's convention.

    BirdFlowR's ``obs_weight`` multiplies the plain L2 sum; with ``loss.l2_norm: cells`` ours
    multiplies it times the effective cells per week, so the recorded ``obs_weight`` is
    ``loss.obs_weight * l2_scale`` (the same objective), and ``l2_norm`` / ``l2_scale`` say how
    to get the config's weight back. dist/ent weights and dist_pow mean the same in both.
    """
    hyper = {"obs_weight": loss_cfg.obs_weight, "ent_weight": loss_cfg.ent_weight,
             "dist_weight": loss_cfg.dist_weight, "dist_pow": loss_cfg.dist_pow}
    if loss_cfg.location == "l2":
        scale = l2_scale(ds, loss_cfg)
        hyper.update(obs_weight=loss_cfg.obs_weight * scale, l2_norm=loss_cfg.l2_norm,
                     l2_scale=scale)
    return hyper


def finish_run(cfg, run_dir, ds, index, params, history, loss_cfg, opt, after) -> RunResult:
    """Save fitted ``params`` as an ordinary run dir (model, history, ``after``, run.json).

    The training loop ends here, and so does tuning for its final model (:mod:`birdflow.tuning`).
    """
    _, M = markov.marginals(params, index)
    hyper = {**recorded_weights(ds, loss_cfg),
             "learning_rate": opt.learning_rate, "training_steps": opt.steps, "rng_seed": int(cfg.seed),
             "location_loss": loss_cfg.location, "normalized": True}
    model = BirdFlowModel(data=ds, index=index, marginals=np.asarray(M, dtype=np.float64),
                          hyperparameters=hyper,
                          loss_history={k: np.asarray(v) for k, v in history.items() if k != "step"},
                          run_dir=run_dir)
    save_model(model, run_dir)
    write_history_csv(run_dir, history)
    if after is not None:
        after(cfg, run_dir, model, history)
    write_run_info(run_dir, status="finished", steps_done=opt.steps,
                   runtime_s=float(history["time_s"][-1]) if history.get("time_s") else 0.0,
                   **sinkhorn_status(history))
    log.info("finished: %s", run_dir)
    print(f"run dir: {run_dir}")
    return RunResult(run_dir, model, history)
