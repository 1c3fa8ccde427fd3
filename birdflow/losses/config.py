"""Loss configuration: ``loss.*`` of the Hydra config as frozen, validated dataclasses.

:class:`W2Config` (``loss.w2``) and :class:`LossConfig` (weights, location loss, ``w2``) are
static and hashable: they never reach traced code as values. ``LossConfig.from_mapping`` turns
a Hydra ``loss`` node into one and raises a one-line ConfigError naming the key for bad values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from birdflow.errors import ConfigError
from birdflow.losses import grid_kernel, location

LOCATIONS = ("l2", "w2")
L2_NORMS = ("cells", "plain")
ON_UNCONVERGED = ("warn", "stop")
ONLINE_COST = ("auto", True, False)
GRID_KERNEL = ("auto", True, False)
NULLABLE = ("epsilon_cells_start", "iterations_per_step")  # numeric keys that may be null
# keys whose meaning changed: the one-line error says what replaced them
RETIRED = {
    "epsilon": "it was relative to the largest cost, so its blur depended on the range (0.001 is "
               "0.04 one-cell costs on a 5 x 6-cell range, ~60 on a continental one); set "
               "loss.w2.epsilon_cells=<epsilon in one-cell costs> instead (default 2: a blur of "
               "about 1.4 cells)",
    "epsilon_start": "it was relative to the largest cost; set loss.w2.epsilon_cells_start=<start "
                     "epsilon in one-cell costs> instead",
}


@dataclass(frozen=True)
class W2Config:
    """Entropic W2 location loss settings (``loss.w2`` in the Hydra config).

    ``epsilon_cells`` is the entropic blur in one-cell costs: epsilon = ``epsilon_cells`` x the
    normalised cost of moving one cell (``res_km``), the unit the W2 loss is reported in, so
    it means the same on every grid and range. With the ``sqeuclidean`` cost the Gibbs kernel
    weighs a move of d cells by exp(-d^2 / epsilon_cells): a blur of about
    sqrt(epsilon_cells) cells (the default 2: ~1.4 cells). Below ~0.3 one-cell costs the plan
    hardly mixes neighbouring cells and Sinkhorn needs thousands of iterations (the marginal
    error guard below reports it). Cold solves (step 0, the cached W(s, s), evaluation) anneal
    epsilon from the largest cost down to it (epsilon scaling, :mod:`birdflow.losses.blur`).
    With ``epsilon_cells_start`` set, epsilon also decays log-linearly from it to
    ``epsilon_cells`` over ``epsilon_decay_steps`` training steps. The summed weekly W2 is
    measured in one-cell moves (divided by the normalised cost of moving ``res_km``) and
    multiplied by ``scale``. Debiasing (the Sinkhorn divergence) is on by default: the plain
    entropic cost is not minimised at mu = s (it favours shrunken marginals) and fit the
    synthetic species badly (mean TV 0.57 vs 0.045 debiased, 600 steps, same scale).

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
    ``max_iterations`` before its tolerance (counted per step as ``n_unconverged``): ``warn``
    (log it and go on; a run unconverged for ``training.loop.PERSISTENT_STEPS`` steps in a row
    stops) or ``stop`` (end the run with an error at the first).

    Amortised Sinkhorn: ``iterations_per_step`` k (null = solve to ``threshold`` every
    step) runs k Sinkhorn iterations per step for W(mu, s) and W(mu, mu), warm-started from
    the previous step's potentials, then checks the L1 marginal error: a week whose error is
    above ``error_tolerance`` keeps iterating (k at a time, up to ``max_iterations``) until it
    is below (counted per step as ``n_extended``); one still above it at ``max_iterations``
    counts in ``n_unconverged``. The gradient (``grad_mode``) uses the potentials as they
    are. Step 0 and, with ``full_solve_every`` m > 0, every m-th step solve to ``threshold``
    instead. Every step reports ``sinkhorn_error``, the largest L1 marginal error of the
    W(mu, .) potentials it used. ``error_tolerance`` also bounds the implicit gradient: a
    week-solve whose marginal error is above it uses the envelope gradient (``n_fallback``).

    ``online_cost`` (``auto``, true, false): the ground cost is computed from cell
    coordinates inside each Sinkhorn iteration, a block of rows at a time
    (:class:`birdflow.losses.online_cost.OnlineSlotGeometry`), instead of being read from
    an (n_cells, n_cells) matrix: W2 memory O(n) per week. ``auto`` turns it on above
    :data:`birdflow.losses.online_cost.AUTO_CELLS` active cells; ``grad_mode: danskin``
    only.

    ``grid_kernel`` (``auto``, true, false): apply the Sinkhorn kernel one grid axis at a
    time on per-week boxes of the raster (:mod:`birdflow.losses.grid_kernel`): the
    ``sqeuclidean`` cost on a regular grid factorises, so an update costs O(B (H + W)) for a
    box of B = H x W cells instead of O(n_max^2), with no cost matrix at all. ``auto`` uses it
    whenever it applies (``sqeuclidean``, ``danskin``, regular grid) and costs less; it then
    takes precedence over ``shared_cost`` and ``online_cost``.
    """

    cost: str = "sqeuclidean"
    cost_pow: float = 0.4
    epsilon_cells: float = 2.0
    epsilon_cells_start: float | None = None
    epsilon_decay_steps: int = 0
    threshold: float = 1e-3
    max_iterations: int = 2000
    grad_mode: str = "danskin"
    linear_solve: str = "cg"
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
    error_tolerance: float = 1e-3
    full_solve_every: int = 0
    online_cost: str | bool = "auto"
    grid_kernel: str | bool = "auto"


@dataclass(frozen=True)
class LossConfig:
    """Objective weights and the location loss.

    The dataclass defaults are BirdFlowPy's objective (``update_hdf.py``); the packaged
    ``conf/loss/l2.yaml`` holds birdflow's defaults (README "Loss weights").
    ``l2_norm`` says what ``obs_weight`` multiplies when the location loss is L2: ``cells`` the
    L2 term times the species' effective number of cells per week
    (:func:`birdflow.losses.objective.effective_cells`), so the same weights mean the same at
    every resolution; ``plain`` BirdFlowPy's sum of squared errors (a config without the key,
    e.g. a run saved before it existed, means ``plain``). The objective with ``cells`` is
    BirdFlowPy's with ``obs_weight`` times that number, which is the ``obs_weight`` a run
    records and exports (BirdFlowR's convention).
    """

    location: str = "l2"
    obs_weight: float = 1.0
    dist_weight: float = 1e-2
    ent_weight: float = 1e-4
    dist_pow: float = 0.4
    l2_norm: str = "plain"
    w2: W2Config = field(default_factory=W2Config)

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> LossConfig:
        """Build and validate from a mapping (e.g. Hydra's ``cfg.loss``); ConfigError names the key."""
        m = dict(m or {})
        w2 = _build(W2Config, dict(m.pop("w2", None) or {}), "loss.w2")
        cfg = _build(cls, m, "loss", w2=w2)
        _check_choice("loss.location", cfg.location, LOCATIONS)
        _check_choice("loss.l2_norm", cfg.l2_norm, L2_NORMS)
        for key in ("obs_weight", "dist_weight", "ent_weight", "dist_pow"):
            _check(f"loss.{key}", getattr(cfg, key), lambda v: v >= 0, ">= 0")
        c = cfg.w2
        _check_choice("loss.w2.cost", c.cost, location.COSTS)
        _check_choice("loss.w2.grad_mode", c.grad_mode, location.GRAD_MODES)
        _check_choice("loss.w2.linear_solve", c.linear_solve, location.LINEAR_SOLVES)
        _check_choice("loss.w2.on_unconverged", c.on_unconverged, ON_UNCONVERGED)
        _check("loss.w2.momentum", c.momentum, lambda v: 0 < v < 2, "in (0, 2)")
        for key in ("epsilon_cells", "threshold", "error_tolerance", "scale", "cost_pow"):
            _check(f"loss.w2.{key}", getattr(c, key), lambda v: v > 0, "> 0")
        _check("loss.w2.max_iterations", c.max_iterations, lambda v: v > 0, "> 0")
        _check("loss.w2.inner_iterations", c.inner_iterations, lambda v: v > 0, "> 0")
        _check("loss.w2.week_batch", c.week_batch, lambda v: v >= -1, ">= -1 (-1 = auto)")
        _check("loss.w2.epsilon_decay_steps", c.epsilon_decay_steps, lambda v: v >= 0, ">= 0")
        if c.epsilon_cells_start is not None:
            _check("loss.w2.epsilon_cells_start", c.epsilon_cells_start, lambda v: v > 0,
                   "> 0 (or null)")
        if c.iterations_per_step is not None:
            _check("loss.w2.iterations_per_step", c.iterations_per_step,
                   lambda v: v == int(v) and v >= 1, "an integer >= 1 (or null)")
        _check("loss.w2.full_solve_every", c.full_solve_every, lambda v: v >= 0,
               ">= 0 (0 = only step 0)")
        _check_choice("loss.w2.online_cost", c.online_cost, ONLINE_COST)
        _check_choice("loss.w2.grid_kernel", c.grid_kernel, GRID_KERNEL)
        if c.grid_kernel is True:  # the grid's own reasons (cost, grad_mode) as a ConfigError
            grid_kernel.use_grid(True, c.cost, c.grad_mode, 1, (1, 1))
        if c.online_cost is True and c.grad_mode != "danskin":
            raise ConfigError(f"loss.w2.online_cost: true needs loss.w2.grad_mode=danskin, got "
                              f"grad_mode={c.grad_mode!r}; set loss.w2.online_cost=false or auto")
        return cfg


def _build(cls, m: dict, prefix: str, **extra):
    names = {f.name: f for f in dataclasses.fields(cls)}
    if cls is W2Config:  # a retired key set to null is ignored, any other value is an error
        for k in sorted(set(m) & set(RETIRED)):
            if m.pop(k) is not None:
                raise ConfigError(f"{prefix}.{k}: no longer used: {RETIRED[k]}")
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
