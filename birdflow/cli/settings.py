"""The settings of the commands that read a run dir: one frozen dataclass per command.

Each dataclass is the single source of its command's defaults: it is registered once as the
Hydra structured config ``<command>_schema`` that ``conf/<command>.yaml`` starts from (the YAML
keeps only Hydra's own settings), so Hydra checks the types of every override, and the command
turns the composed config into one frozen instance (:func:`settings`) before calling the library;
nothing below the command sees the Hydra object. Ranges are checked in ``__post_init__`` and fail
as one line (:class:`birdflow.errors.ConfigError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf

from birdflow.errors import ConfigError

T = TypeVar("T")


def _finite(obj, *keys: str, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()):
    for key in keys:
        value = getattr(obj, key)
        if value is None:
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: must be a finite number (or null)")
        if key in positive and not value > 0:
            raise ConfigError(f"{key}={value!r}: must be > 0 (or null for the default)")
        if key in non_negative and value < 0:
            raise ConfigError(f"{key}={value!r}: must be >= 0 (or null for the default)")


@dataclass(frozen=True)
class EvaluateSettings:
    """``birdflow evaluate``: score a fitted model into ``<run>/metrics.json`` (another tracks
    file: ``metrics_<file stem>.json``)."""

    run: str = MISSING                 # the run dir `birdflow train` printed
    tracks: str | None = None          # tracking/banding CSV; null: the run's own (run.json)
    truth: str | None = None           # the true chain's run dir; null: the run's own
    week_range: Any = None             # [first, last] S&T weeks for extra range_* metrics
    w2: bool = True                    # Sinkhorn W2 fit per week (km)
    w2_epsilon: float | None = None    # its blur; null: the metric's default
    win_prob: bool = True              # BirdFlowR's win probability / distance per interval
    min_days: float | None = None      # interval filters (null: no window, BirdFlowR's rule)
    max_days: float | None = None
    min_km: float | None = None
    max_km: float | None = None

    def __post_init__(self):
        _finite(self, "w2_epsilon", "min_days", "max_days", "min_km", "max_km",
                positive=("w2_epsilon", "max_days", "max_km"), non_negative=("min_days", "min_km"))

    def week_pair(self) -> tuple[int, int] | None:
        """``week_range`` as two S&T weeks (a list, or ``"10-20"``/``"10,20"``)."""
        if self.week_range is None:
            return None
        wr = self.week_range
        parts = wr.replace(",", "-").split("-") if isinstance(wr, str) else list(wr)
        try:
            return int(parts[0]), int(parts[1])
        except (ValueError, IndexError, TypeError):
            raise ConfigError(f"week_range={wr!r}: give two S&T weeks, e.g. "
                              "week_range=[10,20]") from None


@dataclass(frozen=True)
class RoutesSettings:
    """``birdflow routes``: sample flight paths into ``<run>/routes.csv`` and its GeoJSON."""

    run: str = MISSING                 # the run dir `birdflow train` printed
    n: int = 100                       # routes to sample (per start point with lon/lat)
    start: Any = None                  # date (YYYY-MM-DD) or S&T week; null: the first week
    start_week: Any = None             # the same as start, by its older name (give one)
    end: Any = None                    # date or S&T week to stop at; null: `weeks` moves
    weeks: int | None = None           # weekly moves per route; null: to the end of the year
    direction: str | None = None       # forward | backward; null: implied by two dates
    season: str | None = None          # prebreeding | breeding | postbreeding | nonbreeding ...
    season_buffer: int = 1             #   widened by this many weeks (replaces start/end)
    lon: Any = None                    # start in the cell holding (lon, lat), or lists of points
    lat: Any = None
    start_from: str = "model"          # sampled start cells: model | st (the S&T distribution)
    seed: int = 0

    def __post_init__(self):
        if self.n <= 0:
            raise ConfigError(f"n={self.n}: must be a positive number of routes")
        if self.weeks is not None and self.weeks <= 0:
            raise ConfigError(f"weeks={self.weeks}: must be > 0 (or null for the default)")
        if self.season_buffer < 0:
            raise ConfigError(f"season_buffer={self.season_buffer}: must be >= 0")
        if self.start_from not in ("model", "st"):
            raise ConfigError(f"start_from={self.start_from!r}: use model (the model's "
                              "distribution of the start week) or st (the S&T distribution)")
        if self.start is not None and self.start_week is not None:
            raise ConfigError("start/start_week: give one of them (start takes a date or a week)")


@dataclass(frozen=True)
class MapsSettings:
    """``birdflow maps``: the figures of a run into ``<run>/figures/``."""

    run: str = MISSING                 # the run dir `birdflow train` printed
    n_routes: int = 20                 # routes drawn (the run's routes.csv if present)
    dpi: int = 110

    def __post_init__(self):
        if self.n_routes <= 0 or self.dpi <= 0:
            raise ConfigError(f"n_routes={self.n_routes}, dpi={self.dpi}: must be positive")


@dataclass(frozen=True)
class SparsifySettings:
    """``birdflow sparsify``: what sparsifying costs; ``out=`` writes a sparse run dir."""

    run: str = MISSING                 # the run dir `birdflow train` printed
    method: str | None = None          # model | marginal | conditional; null: all three
    p: float = 0.99                    # fraction of the joint mass to keep
    p_protected: float = 0.10          # conditional: fraction of each row/column never removed
    fix: bool = True                   # remove dead ends (BirdFlowR's fix_dead_ends)
    tracks: str | None = None          # tracks CSV scored; null: the run's own (run.json)
    score: bool = True                 # score the tracks (false: density and fit only)
    out: str | None = None             # write the model sparsified with `method` here

    def __post_init__(self):
        for key in ("p", "p_protected"):
            value = getattr(self, key)
            if not 0 < value <= 1:
                raise ConfigError(f"{key}={value}: must be in (0, 1]")


@dataclass(frozen=True)
class ExportSettings:
    """``birdflow export``: a run dir to BirdFlowR HDF5 / GeoTIFF / flux, or an HDF5 to a run dir."""

    run: str | None = None             # the run dir to export (exactly one of run= and hdf5=)
    hdf5: str | None = None            # a BirdFlowR model file to import
    out: str | None = None             # export: file or folder; import: the run dir to create
    format: str = "hdf5"               # hdf5 (BirdFlowR v3) | geotiff | flux


SCHEMAS = {"evaluate": EvaluateSettings, "routes": RoutesSettings, "maps": MapsSettings,
           "sparsify": SparsifySettings, "export": ExportSettings}


def register() -> None:
    """Store each schema as ``<command>_schema`` (once; Hydra composes from it).

    The node is the structured config of the frozen dataclass made writable, so command-line
    overrides apply and are type-checked; the frozen dataclass is what :func:`settings` builds.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in SCHEMAS.items():
        node = OmegaConf.structured(cls)
        OmegaConf.set_readonly(node, False)
        store.store(name=f"{name}_schema", node=node)


def settings(cfg: DictConfig, cls: type[T]) -> T:
    """The frozen settings object of a composed config (its ranges checked)."""
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


register()
