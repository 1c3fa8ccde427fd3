"""One species' bilevel problem as ``birdflow tune`` sets it up: data, bird split, fit space.

:func:`load_split` reads a species' S&T data and tracks and splits the birds;
:func:`build` turns that into a :class:`SpeciesProblem`: the inner problem in its fit space
(the kernel form by default), the tuning loss (negative mean interval log-likelihood of the
tuning birds, plus the optional S&T-fit penalty), the validation monitor, θ's start and bounds,
and the :class:`birdflow.tuning.search.Parts` the outer loop calls. ``birdflow tune``
(:mod:`outer`) tunes one such problem; :mod:`joint` tunes one θ (or a trait model) for several.
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
from birdflow.errors import ConfigError, DataError
from birdflow.model import markov
from birdflow.model.neighbours import summary
from birdflow.synthetic import ensure_synthetic, load_or_preprocess
from birdflow.training.loop import build_index
from birdflow.tuning import hypergrad, inner, likelihood, newton, penalty, search
from birdflow.tuning.kernel_form import KernelForm
from birdflow.tuning.settings import TuneSettings
from birdflow.tuning.split import BirdSplit, split_birds

log = logging.getLogger("birdflow.tuning.problem")


def tracks_path(cfg: DictConfig) -> tuple[str, str | None]:
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


def w2_for_tuning(loss_cfg, ts: TuneSettings):
    """W2 as tuning needs it: full Sinkhorn solves to ``tune.w2_threshold`` every evaluation,
    differentiated implicitly through the optimality conditions with all weeks in one vmap —
    the mode whose forward-over-reverse Hessian-vector products are exact.

    (The solves keep ``loss.w2.inner_iterations``: with a convergence test after every
    iteration, 0.41 s a gradient became 0.17 s at 205 cells, but tight fits of the tiny test
    problem then stalled at |∇| 5e-8 to 1e-4 instead of reaching 3e-8 in 19 Newton steps.)
    """
    w2 = replace(loss_cfg.w2, iterations_per_step=None, grad_mode="implicit", week_batch=0,
                 linear_solve="direct")
    if ts.w2_threshold:
        w2 = replace(w2, threshold=min(w2.threshold, ts.w2_threshold))
    return replace(loss_cfg, w2=w2)


def start_theta(loss_cfg, start: dict) -> np.ndarray:
    """θ to start from: the loss config's weights, replaced by ``tune.start`` where given."""
    theta = inner.theta_from_config(loss_cfg)
    for i, key in enumerate(("dist_weight", "ent_weight", "dist_pow", "w2_scale")):
        if key in start:
            theta[i] = float(start[key]) if key == "dist_pow" else np.log(float(start[key]))
    return theta


def load_split(cfg: DictConfig, ts: TuneSettings, tracks_csv: str, data=None):
    """(S&T dataset, its path, tracks, bird split) of the configured species.

    ``data``: an in-memory dataset instead of the grid train chooses (res_km null: the sparse
    model's budget).
    """
    if data is None:
        ds, data_path = load_or_preprocess(cfg.species, cfg.data,
                                           (cfg.get("model") or {}).get("neighbourhood_km"))
    else:
        ds, data_path = data, "<in memory>"
    tracks = load_tracks(tracks_csv, ds)
    split = split_birds(tracks.intervals, int(cfg.seed), ts.tuning_fraction,
                        min_intervals=ts.min_intervals, source=tracks_csv)
    return ds, data_path, tracks, split


@dataclass
class SpeciesProblem:
    """A species' inner problem, tuning loss and outer-loop parts (see module doc).

    ``params`` is the first fit's start in the fit space (at ``theta0``); ``free``, ``lo`` and
    ``hi`` are θ's free components and bounds (``tune.free``, ``tune.bounds``).
    """

    index: markov.WeekIndex
    prob: inner.Inner
    space: object
    parts: search.Parts
    params: dict
    theta0: np.ndarray
    free: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    split: BirdSplit
    st_distr: np.ndarray  # (weeks, cells) S&T distributions: the null's forecasts

    @property
    def n_tuning(self) -> int:
        return len(self.split.tuning)

    def null_log_likelihood(self, intervals=None) -> float:
        """The S&T-only null's mean interval log-likelihood (``log(s_t2(end) + 1e-8)``, as
        :func:`birdflow.evaluation.intervals.score_intervals` scores it); default: the
        validation birds."""
        iv = self.split.validation if intervals is None else intervals
        s = self.st_distr[iv["t2"].to_numpy(int), iv["cell2"].to_numpy(int)]
        return float(np.mean(np.log(s + likelihood.LL_FLOOR)))


def build(cfg: DictConfig, ts: TuneSettings, loss_cfg, ds, split: BirdSplit,
          dtype) -> SpeciesProblem:
    """The :class:`SpeciesProblem` of a species' data and bird split (``birdflow tune``'s set-up)."""
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
    theta0 = np.clip(start_theta(loss_cfg, ts.start), lo, hi)
    if ts.init == "st":
        params = inner.st_init(ds, index, dtype)
    else:
        params = markov.init_params(jax.random.PRNGKey(int(cfg.seed)), index, dtype)
    space = prob
    if ts.inner.form == "kernel":  # fit one potential per cell and week (tuning.kernel_form)
        space = KernelForm(prob)
        params = space.start(prob.problem.targets if ts.init == "st"
                             else markov.marginals(params, index)[0], params["z0"], theta0)
    min_cor = jax.jit(lambda p: jnp.min(fit_penalty(p)[1]))
    loss_se = float(likelihood.mean_standard_error(  # at the start: what the birds can resolve
        space.logits(params, jnp.asarray(theta0, dtype)), index, batch, k_lag))
    parts = search.Parts(
        fit=newton.make_newton(space, ts.inner, ts.solve.hvp, ts.solve.fd_step),
        implicit=hypergrad.make_implicit(space, outer_loss, ts.solve, ts.inner.block_colors),
        outer=jax.jit(outer_loss),
        monitors=(val_ll, min_cor), space=space, loss_se=loss_se,
        unrolled=(hypergrad.make_unrolled(space, outer_loss, ts.unroll_steps, ts.unroll_lr)
                  if ts.hypergradient == "unrolled" else None))
    return SpeciesProblem(index, prob, space, parts, params, theta0, free, lo, hi, split,
                          np.asarray(ds["distr"].values, np.float64))
