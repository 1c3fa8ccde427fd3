"""``tune.*`` config -> frozen settings (validated; Hydra configs never reach jitted code)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from birdflow.errors import ConfigError
from birdflow.tuning.descent import DescentSettings
from birdflow.tuning.hypergrad import SolveSettings
from birdflow.tuning.inner import THETA_NAMES
from birdflow.tuning.newton import NewtonSettings
from birdflow.tuning.penalty import FitPenalty

HYPERGRADIENTS = ("implicit", "unrolled")
INITS = ("st", "random")
DESCENT_KEYS = tuple(f.name for f in fields(DescentSettings))


W2_START_ENT_WEIGHT = 3e-3  # where a W2 tune starts unless tune.start.ent_weight says otherwise
# The relative change of a W2 inner loss its evaluation resolves (tune.inner.resolution auto).
# Measured at 205 cells a week (solves to 1e-9): the line search found no decrease along Newton
# steps that promised 9e-11 of |L_in| while the gradient norm was still 2.7e-6 (gtol 1e-6).
W2_RESOLUTION = 1e-9


@dataclass(frozen=True)
class TuneSettings:
    """Outer-loop settings (``tune`` in ``conf/tune.yaml``; see the comments there)."""

    hypergradient: str = "implicit"
    unroll_steps: int = 200
    unroll_lr: float = 1.0
    free: tuple[str, ...] = ("log_dist_weight", "log_ent_weight", "dist_pow")
    bounds: dict = field(default_factory=lambda: {
        "log_dist_weight": (-12.0, 3.0), "log_ent_weight": (-14.0, 2.0), "dist_pow": (0.05, 2.0),
        "log_w2_scale": (-8.0, 4.0)})
    tuning_fraction: float = 0.5
    min_intervals: int = 20
    init: str = "st"
    first_max_steps: int = 200
    start: dict = field(default_factory=dict)
    w2_threshold: float | None = 1e-9
    descent: DescentSettings = field(default_factory=DescentSettings)
    inner: NewtonSettings = field(default_factory=NewtonSettings)
    solve: SolveSettings = field(default_factory=SolveSettings)
    fit_penalty: FitPenalty = field(default_factory=FitPenalty)

    @property
    def steps(self) -> int:
        return self.descent.steps


def _sub(cls, m: Mapping | None, prefix: str):
    m = dict(m or {})
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(m) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys are {sorted(names)}")
    return cls(**m)


def tune_settings(m: Mapping | None, location: str) -> TuneSettings:
    """Build and check :class:`TuneSettings` (``location``: the loss, l2 or w2)."""
    m = {k: v for k, v in dict(m or {}).items()}
    inner = dict(m.pop("inner", None) or {})
    solve = dict(m.pop("solve", None) or {})
    desc = {k: m.pop(k) for k in DESCENT_KEYS if k in m}
    for key in ("learning_rate", "b1", "b2"):
        if key in m:
            raise ConfigError(f"tune.{key}: the outer loop no longer takes Adam steps; it takes "
                              "downhill quasi-Newton steps in a trust radius (tune.radius)")
    if inner.get("form", "kernel") not in ("kernel", "logits"):
        raise ConfigError(f"tune.inner.form: {inner['form']!r}; choose kernel or logits")
    if inner.get("cg_norm", "scaled") not in ("scaled", "plain"):
        raise ConfigError(f"tune.inner.cg_norm: {inner['cg_norm']!r}; choose scaled or plain")
    if inner.get("precond", "auto") not in ("auto", "mass", "block"):
        raise ConfigError(f"tune.inner.precond: {inner['precond']!r}; choose auto, mass or block")
    if inner.get("precond") == "block" and inner.get("form", "kernel") != "kernel":
        raise ConfigError("tune.inner.precond=block needs tune.inner.form=kernel (its blocks are "
                          "a week's potentials); use precond=mass for the logits")
    if int(inner.get("block_colors", 8)) < 1:
        raise ConfigError(f"tune.inner.block_colors: {inner['block_colors']!r}; at least 1")
    if "solver" in inner:
        raise ConfigError("tune.inner.solver: inner fits are Newton-CG now; remove the key")
    for key in ("atol",):
        solve.pop(key, None)  # older configs: CG tolerances are relative (tune.solve.rtol)
    if inner.get("resolution", "auto") == "auto":  # W2's value comes from Sinkhorn solves
        inner["resolution"] = W2_RESOLUTION if location == "w2" else NewtonSettings.resolution
    if solve.get("hvp", "auto") == "auto":
        solve["hvp"] = "linearize"  # exact (W2 through its implicit Sinkhorn derivatives)
    if m.get("free") is None:
        m["free"] = TuneSettings.free + (("log_w2_scale",) if location == "w2" else ())
    m["free"] = tuple(m["free"])
    start = {k: v for k, v in dict(m.pop("start", None) or {}).items() if v is not None}
    bad = sorted(set(start) - {"dist_weight", "ent_weight", "dist_pow", "w2_scale"})
    if bad:
        raise ConfigError(f"tune.start.{bad[0]}: unknown key; valid keys are dist_weight, "
                          "ent_weight, dist_pow, w2_scale")
    if location == "w2":  # W2's loss defaults are BirdFlowPy's nearly deterministic ent_weight
        # 1e-4, where no inner fit became stationary (|grad| 0.01-0.035 after 600 Newton steps on
        # 26 cells a week, in either fit space); at 3e-3 the first fit takes 4 Newton steps
        start.setdefault("ent_weight", W2_START_ENT_WEIGHT)
    m["start"] = start
    b = dict(TuneSettings().bounds)
    if m.get("bounds") is not None:
        for k, v in dict(m["bounds"]).items():
            if k not in THETA_NAMES or len(v) != 2 or not float(v[0]) < float(v[1]):
                raise ConfigError(f"tune.bounds.{k}: expected one of {list(THETA_NAMES)} with "
                                  "[lower, upper], lower < upper")
            b[k] = (float(v[0]), float(v[1]))
    m["bounds"] = b
    penalty = _sub(FitPenalty, m.pop("fit_penalty", None), "tune.fit_penalty")
    if penalty.min_cor is not None and not (-1 < float(penalty.min_cor) < 1 and penalty.weight > 0):
        raise ConfigError(f"tune.fit_penalty: min_cor must be in (-1, 1) and weight > 0, got "
                          f"min_cor={penalty.min_cor!r}, weight={penalty.weight!r}")
    s = _sub(TuneSettings, m, "tune")
    s = TuneSettings(**{**{f.name: getattr(s, f.name) for f in fields(s)},
                        "descent": _sub(DescentSettings, desc, "tune"),
                        "inner": _sub(NewtonSettings, inner, "tune.inner"),
                        "solve": _sub(SolveSettings, solve, "tune.solve"),
                        "fit_penalty": penalty})
    bad = [n for n in s.free if n not in THETA_NAMES]
    if bad:
        raise ConfigError(f"tune.free: unknown hyperparameter {bad[0]!r}; choose from {list(THETA_NAMES)}")
    if location == "l2" and "log_w2_scale" in s.free:
        raise ConfigError("tune.free: log_w2_scale only exists for loss=w2; remove it")
    if s.hypergradient not in HYPERGRADIENTS:
        raise ConfigError(f"tune.hypergradient: unknown value {s.hypergradient!r}; choose one of "
                          f"{list(HYPERGRADIENTS)}")
    if s.init not in INITS:
        raise ConfigError(f"tune.init: unknown value {s.init!r}; choose one of {list(INITS)}")
    ints = (("steps", s.descent.steps), ("max_trials", s.descent.max_trials),
            ("unroll_steps", s.unroll_steps), ("first_max_steps", s.first_max_steps),
            ("inner.max_steps", s.inner.max_steps), ("inner.cg_max_steps", s.inner.cg_max_steps),
            ("solve.max_steps", s.solve.max_steps))
    for key, v in ints:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"tune.{key}: must be a positive integer, got {v!r}")
    positive = (("radius", s.descent.radius), ("min_radius", s.descent.min_radius),
                ("max_radius", s.descent.max_radius), ("inner.gtol", s.inner.gtol),
                ("solve.rtol", s.solve.rtol), ("inner.damping", s.inner.damping),
                ("inner.resolution", s.inner.resolution))
    for key, v in positive:
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ConfigError(f"tune.{key}: must be a number > 0, got {v!r}")
    if isinstance(s.inner.refits, bool) or not isinstance(s.inner.refits, int) or s.inner.refits < 0:
        raise ConfigError(f"tune.inner.refits: must be an integer >= 0, got {s.inner.refits!r}")
    for key, v in (("solve.damping", s.solve.damping), ("solve.max_damping", s.solve.max_damping),
                   ("solve.max_share", s.solve.max_share),
                   ("solve.max_fit_change", s.solve.max_fit_change),
                   ("ftol", s.descent.ftol), ("se_tol", s.descent.se_tol),
                   ("xtol", s.descent.xtol), ("gtol", s.descent.gtol)):
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"tune.{key}: must be a number >= 0, got {v!r}")
    if s.solve.hvp not in ("linearize", "jvp", "fd"):
        raise ConfigError(f"tune.solve.hvp: {s.solve.hvp!r}; choose auto, linearize, jvp or fd")
    if not s.descent.min_radius < s.descent.radius <= s.descent.max_radius:
        raise ConfigError("tune.radius: need min_radius < radius <= max_radius, got "
                          f"{s.descent.min_radius}, {s.descent.radius}, {s.descent.max_radius}")
    return s
