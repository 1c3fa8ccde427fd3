"""The BirdFlow training objective and its configuration.

``objective = obs_weight * location - ... + dist_weight * distance - ent_weight * entropy``
with the location loss L2 (BirdFlowPy) or entropic W2 (see :mod:`birdflow.losses.location`).
Configs are frozen dataclasses (static, hashable: they never reach traced code as values);
:class:`Problem` holds the per-dataset arrays (a pytree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from birdflow.errors import ConfigError
from birdflow.losses import distance, entropy, location, online_cost
from birdflow.model.markov import WeekIndex, marginals

LOCATIONS = ("l2", "w2")
ON_UNCONVERGED = ("warn", "stop")
ONLINE_COST = ("auto", True, False)
NULLABLE = ("epsilon_start", "iterations_per_step")  # numeric keys that may be null


@dataclass(frozen=True)
class W2Config:
    """Entropic W2 location loss settings (``loss.w2`` in the Hydra config).

    ``epsilon`` is relative to the largest ground cost (costs are normalised to [0, 1]); the
    default 1e-3 blurs over sqrt(1e-3) ~ 3 % of the grid diameter (about one cell on real
    100-160 km grids). Measured on sstspa (68 cells) and amewoo at 160 km (300 cells): cold
    start from random logits 650 / 470 iterations (3e-3: 200; 3e-4: >1600), ~10 when warm;
    the gradient's median cosine with the exact (LP) OT potentials is 0.997 and the debiased
    value is within 4 % of the exact OT cost (regularised: +16 %). Very small grids (a few
    cells across) need a larger epsilon. With ``epsilon_start`` set, epsilon decays
    log-linearly from it to ``epsilon`` over ``epsilon_decay_steps`` steps. The summed weekly
    W2 is measured in one-cell moves (divided by the normalised cost of moving ``res_km``)
    and multiplied by ``scale``. Debiasing (the Sinkhorn divergence) is on by default: the
    plain entropic cost is not minimised at mu = s (it favours shrunken marginals) and fit
    the synthetic species badly (mean TV 0.57 vs 0.045 debiased, 600 steps, same scale).

    Speed settings (they change how W2 is solved, not what it is; ``python -m
    birdflow.bench`` measures each): ``cache_target_self`` solves the constant W(s, s)
    once per epsilon value and keeps it in the loss state; ``symmetric`` solves the
    W(mu, mu) and W(s, s) terms with averaged parallel updates; ``shared_cost`` gathers
    each week's cost on the fly from one (n_cells, n_cells) matrix instead of storing a
    (weeks, n_max, n_max) copy (not with ``grad_mode: unroll``); ``inner_iterations`` is
    the number of Sinkhorn iterations between convergence checks; ``week_batch`` how many weeks are solved together (0 all,
    1 one after another, -1 auto: 1 on CPU, 0 on GPU); ``momentum`` over-relaxes the
    W(mu, s) updates (1 = none; 1.5 halved warm iterations at 300 and 1000 cells, 1.9
    diverged at 300 cells).

    ``on_unconverged`` says what training does when a week's Sinkhorn solve stops at
    ``max_iterations`` before ``threshold`` (counted per step as ``n_unconverged``):
    ``warn`` (log it and go on) or ``stop`` (end the run with an error).

    Amortised Sinkhorn: ``iterations_per_step`` k (null = solve to ``threshold`` every
    step) runs exactly k Sinkhorn iterations per step for W(mu, s) and W(mu, mu), warm-
    started from the previous step's potentials, without a convergence check; the
    gradient (``grad_mode``) uses the potentials as they are. Step 0 and, with
    ``full_solve_every`` m > 0, every m-th step solve to ``threshold`` instead. Only those
    convergence-checked solves (and W(s, s)) count in ``n_unconverged``; every step reports
    ``sinkhorn_error``, the largest L1 marginal error of the W(mu, .) potentials.

    ``online_cost`` (``auto``, true, false): the ground cost is computed from cell
    coordinates inside each Sinkhorn iteration, a block of rows at a time
    (:class:`birdflow.losses.online_cost.OnlineSlotGeometry`), instead of being read from
    an (n_cells, n_cells) matrix: W2 memory O(n) per week. ``auto`` turns it on above
    :data:`birdflow.losses.online_cost.AUTO_CELLS` active cells; ``grad_mode: danskin``
    only.
    """

    cost: str = "sqeuclidean"
    cost_pow: float = 0.4
    epsilon: float = 1e-3
    epsilon_start: float | None = None
    epsilon_decay_steps: int = 0
    threshold: float = 1e-3
    max_iterations: int = 2000
    grad_mode: str = "danskin"
    warm_start: bool = True
    debiased: bool = True
    scale: float = 1.0
    cache_target_self: bool = True
    symmetric: bool = True
    shared_cost: bool = True
    inner_iterations: int = 10
    week_batch: int = -1
    momentum: float = 1.5
    on_unconverged: str = "warn"
    iterations_per_step: int | None = 10
    full_solve_every: int = 0
    online_cost: str | bool = "auto"


@dataclass(frozen=True)
class LossConfig:
    """Objective weights (BirdFlowPy ``update_hdf.py`` defaults) and the location loss."""

    location: str = "l2"
    obs_weight: float = 1.0
    dist_weight: float = 1e-2
    ent_weight: float = 1e-4
    dist_pow: float = 0.4
    w2: W2Config = field(default_factory=W2Config)

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> LossConfig:
        """Build and validate from a mapping (e.g. Hydra's ``cfg.loss``); ConfigError names the key."""
        m = dict(m or {})
        w2 = _build(W2Config, dict(m.pop("w2", None) or {}), "loss.w2")
        cfg = _build(cls, m, "loss", w2=w2)
        _check_choice("loss.location", cfg.location, LOCATIONS)
        for key in ("obs_weight", "dist_weight", "ent_weight", "dist_pow"):
            _check(f"loss.{key}", getattr(cfg, key), lambda v: v >= 0, ">= 0")
        c = cfg.w2
        _check_choice("loss.w2.cost", c.cost, location.COSTS)
        _check_choice("loss.w2.grad_mode", c.grad_mode, location.GRAD_MODES)
        _check_choice("loss.w2.on_unconverged", c.on_unconverged, ON_UNCONVERGED)
        _check("loss.w2.momentum", c.momentum, lambda v: 0 < v < 2, "in (0, 2)")
        for key in ("epsilon", "threshold", "scale", "cost_pow"):
            _check(f"loss.w2.{key}", getattr(c, key), lambda v: v > 0, "> 0")
        _check("loss.w2.max_iterations", c.max_iterations, lambda v: v > 0, "> 0")
        _check("loss.w2.inner_iterations", c.inner_iterations, lambda v: v > 0, "> 0")
        _check("loss.w2.week_batch", c.week_batch, lambda v: v >= -1, ">= -1 (-1 = auto)")
        _check("loss.w2.epsilon_decay_steps", c.epsilon_decay_steps, lambda v: v >= 0, ">= 0")
        if c.epsilon_start is not None:
            _check("loss.w2.epsilon_start", c.epsilon_start, lambda v: v > 0, "> 0 (or null)")
        if c.iterations_per_step is not None:
            _check("loss.w2.iterations_per_step", c.iterations_per_step,
                   lambda v: v == int(v) and v >= 1, "an integer >= 1 (or null)")
        _check("loss.w2.full_solve_every", c.full_solve_every, lambda v: v >= 0,
               ">= 0 (0 = only step 0)")
        _check_choice("loss.w2.online_cost", c.online_cost, ONLINE_COST)
        if c.online_cost is True and c.grad_mode != "danskin":
            raise ConfigError(f"loss.w2.online_cost: true needs loss.w2.grad_mode=danskin, got "
                              f"grad_mode={c.grad_mode!r}; set loss.w2.online_cost=false or auto")
        return cfg


def _build(cls, m: dict, prefix: str, **extra):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(m) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys are {sorted(names)}")
    kw = {}
    for k, v in m.items():
        default = names[k].default
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise ConfigError(f"{prefix}.{k}: expected true/false, got {v!r}")
        elif isinstance(default, int | float) or k in NULLABLE:
            if v is None and k in NULLABLE:
                pass
            elif isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{prefix}.{k}: expected a number, got {v!r}; e.g. {prefix}.{k}={default}")
            elif isinstance(default, int) and v != int(v):
                raise ConfigError(f"{prefix}.{k}: expected an integer, got {v!r}; e.g. {prefix}.{k}={default}")
            else:
                v = type(default)(v) if default is not None else (
                    int(v) if k == "iterations_per_step" and v == int(v) else float(v))
        kw[k] = v
    return cls(**kw, **extra)


def _check(key: str, value, ok, what: str) -> None:
    if not ok(value):
        raise ConfigError(f"{key}: must be {what}, got {value!r}; set e.g. {key}=<value {what}>")


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of {list(choices)}")


class Problem(NamedTuple):
    """Per-dataset arrays the objective needs (a pytree; build with :func:`make_problem`).

    Attributes:
        targets: (T+1, n_max) S&T distribution per marginal-week in slot layout (the last is
            week 1 again for cyclic models); padding 0.
        dist_cost: (T, n_max, n_max) ``(d_km / 100)^dist_pow`` from week-t to week-(t+1) slots;
            (T, n_max, K) at ``index.nbr``'s pairs for a sparse model.
        w2_cell_cost: (n_cells, n_cells) normalised W2 ground cost between active cells
            ((0, 0) when the location loss is L2).
        w2_unit: () normalised cost of a one-cell move; W2 is reported divided by it.
        nbr: sparse models: ``index.nbr`` as an int32 device array, passed into the jitted
            step as data (a large table compiled in as a constant costs compile time and
            memory); None for dense models.
        w2_points: online W2 cost (``loss.w2.online_cost``): (n_cells, 2) cell coordinates
            (:func:`birdflow.losses.online_cost.cell_points`; ``w2_cell_cost`` is then (0, 0));
            None otherwise.
        w2_top: () the online cost's normaliser (1 for sqeuclidean).
    """

    targets: jax.Array
    dist_cost: jax.Array
    w2_cell_cost: jax.Array
    w2_unit: jax.Array = 1.0
    nbr: jax.Array | None = None
    w2_points: jax.Array | None = None
    w2_top: jax.Array = 1.0


def make_problem(ds: xr.Dataset, index: WeekIndex, cfg: LossConfig) -> Problem:
    """Slot-layout targets and costs of a BirdFlowData (float32 unless x64 is enabled)."""
    targets = index.slot_values(ds["distr"].values)
    if index.sparse:  # only the kept pairs, from coordinates (never ds["distance_km"])
        dist_cost = distance.sparse_transition_cost(ds["cell_lon"].values, ds["cell_lat"].values,
                                                    index, cfg.dist_pow)
    else:
        dist_cost = distance.transition_cost(ds["distance_km"].values, index, cfg.dist_pow)
    w2_cost, unit, points, top = np.zeros((0, 0)), 1.0, None, 1.0
    dtype = jnp.result_type(float)
    if cfg.location == "w2":
        c = cfg.w2
        coords = (ds["cell_x"].values, ds["cell_y"].values, ds["cell_lon"].values, ds["cell_lat"].values)
        if online_cost.use_online(c.online_cost, len(coords[0])) and c.grad_mode == "danskin":
            points, top, unit = online_cost.cell_points(*coords, c.cost, c.cost_pow,
                                                        float(ds.attrs.get("res_km", 100.0)))
            points = jnp.asarray(points, dtype)
        else:
            w2_cost = location.cell_cost(*coords, c.cost, c.cost_pow)
            unit = location.one_cell_cost(*coords, float(ds.attrs.get("res_km", 100.0)), c.cost,
                                          c.cost_pow)
    nbr = None if index.nbr is None else jnp.asarray(index.nbr, jnp.int32)
    arrays = (jnp.asarray(a, dtype=dtype) for a in (targets, dist_cost, w2_cost, unit))
    return Problem(*arrays, nbr=nbr, w2_points=points, w2_top=jnp.asarray(top, dtype))


def init_loss_state(problem: Problem, index: WeekIndex, cfg: LossConfig) -> Any:
    """W2 loss state; ``{}`` for L2.

    ``f``, ``g``: warm-start Sinkhorn potentials (zeros = cold start), (n_solves * W, n_max);
    ``ref``: the cached W(s, s) per week (W,), ``ref_eps`` the epsilon it was solved at
    (-1: not yet solved) and ``ref_converged`` (W,) whether each of those solves converged.
    """
    if cfg.location != "w2":
        return {}
    w = problem.targets.shape[0]
    dtype = problem.targets.dtype
    zeros = jnp.zeros((location.n_solves(cfg.w2.debiased) * w, index.n_max), dtype)
    return {"f": zeros, "g": zeros, "ref": jnp.zeros((w,), dtype), "ref_eps": jnp.asarray(-1.0, dtype),
            "ref_converged": jnp.zeros((w,), bool)}


def epsilon_at(cfg: W2Config, step) -> jax.Array:
    """Epsilon at training ``step``: log-linear from ``epsilon_start`` to ``epsilon``."""
    if cfg.epsilon_start is None or cfg.epsilon_decay_steps <= 0:
        return jnp.asarray(cfg.epsilon)
    r = jnp.clip(jnp.asarray(step) / cfg.epsilon_decay_steps, 0.0, 1.0)
    return jnp.exp((1.0 - r) * np.log(cfg.epsilon_start) + r * np.log(cfg.epsilon))


def objective(params: dict, problem: Problem, index: WeekIndex, cfg: LossConfig, state: Any,
              step, weights: Mapping | None = None) -> tuple[jax.Array, tuple[dict, Any]]:
    """Total loss and its terms; differentiable in ``params`` (``jax.value_and_grad(has_aux=True)``).

    ``weights`` (optional; used by :mod:`birdflow.tuning`) replaces any of the config's
    ``obs_weight``, ``dist_weight``, ``ent_weight``, ``dist_pow`` and ``w2_scale`` with traced
    scalars, so the objective is also differentiable in them; ``dist_pow`` is then applied to
    the precomputed cost as ``c^(p / cfg.dist_pow)`` (zero distances stay zero).

    Returns:
        ``(total, (terms, new_state))``; terms: "total", "obs" (location loss in use, W2 after
        ``scale``), "dist", "ent" (BirdFlowPy's bracket, subtracted), "l2", and for W2 "w2"
        (unscaled sum over weeks, in one-cell-move units), "sinkhorn_iterations" (slowest week),
        "epsilon", "n_unconverged" (week-solves, all terms, that stopped at max_iterations before
        the threshold; amortised steps count only W(s, s)), "n_fallback" (implicit mode:
        week-solves whose gradient fell back to the envelope gradient) and "sinkhorn_error"
        (largest L1 marginal error of the W(mu, s) and W(mu, mu) potentials this step).
    """
    w = {"obs_weight": cfg.obs_weight, "dist_weight": cfg.dist_weight, "ent_weight": cfg.ent_weight,
         "w2_scale": cfg.w2.scale, **(weights or {})}
    dist_cost = problem.dist_cost
    if weights is not None and "dist_pow" in weights:
        dist_cost = distance.repowered_cost(dist_cost, cfg.dist_pow, weights["dist_pow"])
    mu, M = marginals(params, index, problem.nbr)
    l2 = location.l2(mu, problem.targets).sum()
    dist = distance.distance_per_transition(M, dist_cost).sum()
    ent = entropy.entropy_term(mu, M)
    terms = {"l2": l2, "dist": dist, "ent": ent}
    new_state = state
    if cfg.location == "w2":
        c = cfg.w2
        eps = epsilon_at(c, step)
        vals, iters, counts, new_state = _w2_term(mu, problem, index, c, state, eps, step)
        terms.update(w2=vals.sum() / problem.w2_unit, sinkhorn_iterations=iters.max(), epsilon=eps,
                     **counts)
        obs = w["w2_scale"] * terms["w2"]
    else:
        obs = l2
    total = w["obs_weight"] * obs + w["dist_weight"] * dist - w["ent_weight"] * ent
    terms.update(obs=obs, total=total)
    return total, (terms, new_state)


def _w2_term(mu, problem: Problem, index: WeekIndex, c: W2Config, state: dict, eps, step):
    """Weekly W2 values, Sinkhorn iterations and the new loss state (see W2Config)."""
    slot_cell = index.slot_cell[index.week_of_marginal()]
    if problem.w2_points is not None:  # online cost: coordinates, no (n, n) matrix
        cost = online_cost.OnlineCost(problem.w2_points, jnp.asarray(slot_cell), problem.w2_top,
                                      c.cost, c.cost_pow)
    elif c.shared_cost and c.grad_mode != "unroll":  # unrolling cannot carry the int slot table
        cost = location.SlotCost(problem.w2_cell_cost, jnp.asarray(slot_cell))
    else:
        cost = location.slot_cost(problem.w2_cell_cost, slot_cell)
    init = (state["f"], state["g"])
    if not c.warm_start:
        init = tuple(jnp.zeros_like(p) for p in init)
    solve_kw = {"threshold": c.threshold, "max_iterations": c.max_iterations,
                "symmetric": c.symmetric, "inner_iterations": c.inner_iterations,
                "week_batch": c.week_batch}
    w = mu.shape[0]
    ref, ref_val, ref_eps = None, state.get("ref"), state.get("ref_eps")
    if c.debiased and c.cache_target_self:
        ref_init = (init[0][2 * w:], init[1][2 * w:])

        def fresh():
            return location.self_cost(problem.targets, cost, eps, ref_init, **solve_kw)

        def cached():  # the flags W(s, s) had when it was solved; its error is not kept
            return (state["ref"].astype(mu.dtype), *ref_init, jnp.zeros((w,), jnp.int32),
                    state["ref_converged"], jnp.zeros((w,), bool), jnp.full((w,), -1.0, mu.dtype))

        ref = jax.lax.cond(state["ref_eps"] == eps, cached, fresh)
        ref_val, ref_eps = ref[0], jnp.asarray(eps, state["ref_eps"].dtype)

    def solve(fixed):
        return location.w2(mu, problem.targets, cost, eps, init, grad_mode=c.grad_mode,
                           debiased=c.debiased, target_self=ref, momentum=c.momentum,
                           fixed_iterations=fixed, **solve_kw)

    n_mu = 2 * w if c.debiased else w  # the solves that depend on mu
    if c.iterations_per_step is None:
        res = solve(None)
        counted = res.converged
    else:  # amortised: step 0 and every full_solve_every-th step solve to the threshold
        full = step == 0
        if c.full_solve_every > 0:
            full = full | (step % c.full_solve_every == 0)
        res = jax.lax.cond(full, lambda: solve(None), lambda: solve(c.iterations_per_step))
        counted = res.converged.at[:n_mu].set(res.converged[:n_mu] | ~full)
    f, g = res.potentials
    new_state = {"f": f, "g": g}
    if ref_val is not None:
        new_state.update(ref=ref_val, ref_eps=ref_eps,
                         ref_converged=state["ref_converged"] if ref is None else ref[4])
    counts = {"n_unconverged": jnp.sum(~counted), "n_fallback": jnp.sum(res.fallback),
              "sinkhorn_error": jnp.max(res.errors[:n_mu])}
    return res.values, res.iterations, counts, new_state
