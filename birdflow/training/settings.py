"""Plain, validated settings built from the Hydra config before any work starts.

Hydra ``DictConfig`` objects never reach jitted code: they become frozen dataclasses here,
and every out-of-range value fails with a ConfigError naming its key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig

from birdflow.errors import ConfigError
from birdflow.losses.objective import LossConfig

SCHEDULES = ("constant", "cosine", "exponential")
INITS = ("random", "st")
PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class OptimSettings:
    learning_rate: float = 0.1
    steps: int = 600
    schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.999

    @classmethod
    def from_mapping(cls, m: Mapping, prefix: str = "optim") -> OptimSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(m) - known)
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys are {sorted(known)}")
        s = cls(**{k: m[k] for k in m})
        _positive(f"{prefix}.learning_rate", s.learning_rate)
        if int(s.steps) != s.steps or s.steps <= 0:
            raise ConfigError(f"{prefix}.steps={s.steps}: must be a positive integer (e.g. optim.steps=600)")
        if s.schedule not in SCHEDULES:
            raise ConfigError(f"{prefix}.schedule={s.schedule!r}: unknown; choose one of {list(SCHEDULES)}")
        if not 0 <= s.warmup_steps < s.steps:
            raise ConfigError(f"{prefix}.warmup_steps={s.warmup_steps}: must be in [0, optim.steps)")
        if not 0 < s.final_lr_fraction <= 1:
            raise ConfigError(f"{prefix}.final_lr_fraction={s.final_lr_fraction}: must be in (0, 1]")
        for key in ("b1", "b2"):
            if not 0 <= getattr(s, key) < 1:
                raise ConfigError(f"{prefix}.{key}={getattr(s, key)}: must be in [0, 1)")
        return s


@dataclass(frozen=True)
class ModelSettings:
    """Transition layout (``model:`` in conf/train.yaml) and the logits training starts from.

    ``neighbourhood_km``: None (dense), ``"auto"`` or a radius in km; ``neighbours_k``: None
    or the k-nearest variant. At most one is set (see :mod:`birdflow.model.neighbours`).
    ``init``: ``random`` (i.i.d. N(0, 1), BirdFlowPy's) or ``st`` (the S&T null chain,
    :func:`birdflow.model.markov.st_init`).
    """

    neighbourhood_km: float | str | None = None
    neighbours_k: int | None = None
    init: str = "random"

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> ModelSettings:
        m = dict(m or {})
        unknown = sorted(set(m) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"model.{unknown[0]}: unknown key; valid keys are "
                              f"{sorted(cls.__dataclass_fields__)}")
        r, k = m.get("neighbourhood_km"), m.get("neighbours_k")
        if r is not None and r != "auto" and (isinstance(r, bool) or not isinstance(r, int | float)
                                              or not r > 0):
            raise ConfigError(f"model.neighbourhood_km={r!r}: must be a radius in km > 0, auto, "
                              "or null (dense transitions)")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"model.neighbours_k={k!r}: must be a positive integer or null")
        if r is not None and k is not None:
            raise ConfigError(f"model.neighbourhood_km={r} and model.neighbours_k={k}: set one of "
                              "them (the other null)")
        init = m.get("init", "random")
        if init not in INITS:
            raise ConfigError(f"model.init={init!r}: unknown; choose one of {list(INITS)} (random: "
                              "i.i.d. N(0, 1) logits, st: start from the S&T null chain)")
        return cls(neighbourhood_km=float(r) if isinstance(r, int | float) else r, neighbours_k=k,
                   init=init)

    @property
    def sparse(self) -> bool:
        return self.neighbourhood_km is not None or self.neighbours_k is not None

    def radius_km(self, res_km: float, species: Mapping) -> float | None:
        """The radius in km (None for dense or k-nearest); ``auto`` follows the species
        (:func:`birdflow.data.reach.resolve_radius_km`)."""
        from birdflow.data.reach import resolve_radius_km

        return resolve_radius_km(self.neighbourhood_km, res_km, species)


def _positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{key}={value!r}: must be a finite number > 0")


def signif(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant digits (R's ``signif``)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))



def apply_hyper(cfg: Mapping) -> Mapping:
    """The loss settings with ``hyper: {de_ratio, obs_prop}`` turned into dist/ent weights.

    BirdFlowPipeline's grid parameterisation: ``de_ratio`` = dist_weight / ent_weight and
    ``obs_prop`` = obs_weight / (obs_weight + dist_weight + ent_weight), converted with 5
    significant digits like ``refactor_hyperparams``: dist = obs·de(1−op)/(op(de+1)),
    ent = obs·(1−op)/(op(de+1)) (obs_weight = 1 gives the reference formulas). When ``cfg`` is
    a mutable DictConfig, ``cfg.loss`` is updated in place so the saved config shows the weights
    actually used. Without a ``hyper`` node (or with both values null) ``cfg["loss"]`` is returned.

    Raises:
        ConfigError: only one of the two is set, or a value is out of range.
    """
    loss = cfg["loss"]
    hyper = cfg.get("hyper") or {}
    de, op = hyper.get("de_ratio"), hyper.get("obs_prop")
    if de is None and op is None:
        return loss
    if de is None or op is None:
        missing = "hyper.de_ratio" if de is None else "hyper.obs_prop"
        raise ConfigError(f"{missing}: not set; the grid parameterisation needs both hyper.de_ratio "
                          "and hyper.obs_prop (or set neither and use loss.dist_weight/ent_weight)")
    if not isinstance(de, int | float) or not de > 0:
        raise ConfigError(f"hyper.de_ratio={de!r}: must be a number > 0 (dist_weight / ent_weight)")
    if not isinstance(op, int | float) or not 0 < op < 1:
        raise ConfigError(f"hyper.obs_prop={op!r}: must be in (0, 1), e.g. 0.99")
    obs = float(loss.get("obs_weight", 1.0))
    ent = signif(obs * (1 - op) / (op * (de + 1)), 5)
    dist = signif(obs * de * (1 - op) / (op * (de + 1)), 5)
    if isinstance(loss, DictConfig) and not loss._get_flag("readonly"):
        loss.dist_weight, loss.ent_weight = dist, ent
        return loss
    return {**loss, "dist_weight": dist, "ent_weight": ent}


def validate_train_config(cfg: Mapping) -> tuple[LossConfig, OptimSettings]:
    """Check the whole training config; return the loss and optimizer settings."""
    loss = LossConfig.from_mapping(apply_hyper(cfg))  # hyper.de_ratio/obs_prop -> dist/ent weights
    opt = OptimSettings.from_mapping(cfg["optim"])
    if cfg.get("precision", "float32") not in PRECISIONS:
        raise ConfigError(f"precision={cfg.get('precision')!r}: choose one of {list(PRECISIONS)}")
    if int(cfg.get("checkpoint_every", 1)) <= 0:
        raise ConfigError(f"checkpoint_every={cfg.get('checkpoint_every')}: must be a positive integer")
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}: must be a non-negative integer")
    ModelSettings.from_mapping(cfg.get("model"))
    return loss, opt
