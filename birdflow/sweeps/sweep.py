"""Hyperparameter sweeps: ``birdflow sweep summarize dir=<sweep dir>`` (:mod:`birdflow.sweep`).

A sweep is a Hydra multirun of ``python -m birdflow.train -m ...`` (launchers in
``conf/hydra/launcher/``: ``local`` = joblib, ``slurm`` = submitit). Each job writes a run dir
``<sweep dir>/<num>_<species>_<loss>/``; ``summarize`` collects them into one table
(:mod:`birdflow.sweeps.summary`: ``summary.csv``/``.md``), picks the best model per species
(:mod:`birdflow.sweeps.selection`: ``best_models.csv``/``.md``) and draws metric-vs-hyperparameter
plots (``plots/<metric>.png``). Training uses :func:`apply_hyper` (the de_ratio/obs_prop grid
parameterisation), :func:`check_fresh_run_dir` and :func:`job_failure` (a job that raised is
recorded as failed); :class:`SweepGuard` keeps a new sweep out of an existing sweep dir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from birdflow.errors import ConfigError
from birdflow.runs import RunDirLocked, is_run_dir, read_run_info, record_failure
from birdflow.sweeps.summary import (
    HYPER_COLUMNS,
    ID_COLUMNS,
    collect,
    columns,
    write_table,
)
from birdflow.training.settings import apply_hyper  # noqa: F401  (re-exported: the grid parameterisation)


def _job_run_dir(cfg: Mapping) -> Path | None:
    """The run dir a training job writes to (mirrors birdflow.training.loop's choice)."""
    if cfg.get("resume") and cfg.resume is not True:
        return Path(str(cfg.resume))
    if cfg.get("run_dir"):
        return Path(str(cfg.run_dir))
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class RunDirTaken(ConfigError):
    """A new (not resumed) run was pointed at a run dir that already holds one."""


def check_fresh_run_dir(cfg: Mapping) -> None:
    """Refuse to start a new run in a dir that already holds one (unless ``resume``).

    Two sweeps pointed at the same ``hydra.sweep.dir`` would otherwise overwrite each other.
    """
    run_dir = _job_run_dir(cfg)
    if cfg.get("resume") or run_dir is None or not is_run_dir(run_dir):
        return
    status = read_run_info(run_dir).get("status", "?")
    raise RunDirTaken(f"{run_dir}: already holds a run (status {status}); add resume=true to "
                      "continue/skip it, or choose another run_dir / hydra.sweep.dir")


class SweepGuard:
    """Hydra callback (``hydra.callbacks`` in train.yaml): a new multirun into a sweep dir that
    already holds one stops before any job starts, unless ``resume=true`` (re-run, skipping
    finished runs). Raises SystemExit because Hydra turns a callback's Exception into a warning.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if (sweep_dir / "multirun.yaml").exists() and not config.get("resume"):
            raise SystemExit(f"error: {sweep_dir} already holds a sweep; add resume=true to re-run it "
                             "(finished runs are skipped) or choose another hydra.sweep.dir")

    def __getattr__(self, name):  # the other callback hooks do nothing
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def job_failure(cfg: Mapping, exc: BaseException) -> BaseException:
    """Record a job that raised as failed in its run.json; return the exception to re-raise.

    ``birdflow.cli.train.main`` calls it for anything raised by check_fresh_run_dir or train.
    In a multirun, Hydra marks a job failed (and the sweep goes on) only for an ``Exception``:
    a ``KeyboardInterrupt`` from ``debug.raise_after_step`` (a simulated kill) becomes a
    RuntimeError there. (A BirdFlowError in a single run becomes one line and exit status 2 in
    :func:`birdflow.cli.command.command`.)
    """
    run_dir = _job_run_dir(cfg)
    multirun = _is_multirun()
    # training records an error in its own run.json (it holds the lock then); a single run
    # rejected before that leaves no run dir behind, and an interrupted one stays "running"
    # (resumable). A sweep job's dir exists already (Hydra made it) and its failure, an
    # interruption included, belongs in the sweep summary.
    if multirun and run_dir is not None and run_dir.is_dir() \
            and not isinstance(exc, RunDirTaken | RunDirLocked) \
            and read_run_info(run_dir).get("status") not in ("finished", "stopped"):
        record_failure(run_dir, exc)
    debug = (cfg.get("debug") or {}).get("raise_after_step")
    if multirun and isinstance(exc, KeyboardInterrupt) and debug is not None:
        return RuntimeError(f"job interrupted by {exc}")
    return exc


def summarize(sweep_dir: str | os.PathLike, threshold: float = 0.9, cor_metric: str = "min_dist_cor",
              plots: bool = True) -> tuple[list[dict], list[dict]]:
    """Write summary.csv/.md, best_models.csv/.md and plots/ into the sweep dir.

    Returns:
        (rows, best): the summary rows and the chosen models (one row per species and criterion).
    """
    from birdflow.sweeps.selection import best_models, plot_tuning

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    write_table(rows, columns(rows), sweep_dir / "summary")
    best = best_models(rows, threshold=threshold, cor_metric=cor_metric)
    best_cols = list(dict.fromkeys(k for b in best for k in b))
    write_table(best, best_cols, sweep_dir / "best_models")
    if plots:
        plot_tuning(rows, sweep_dir / "plots")
    return rows, best


def brief_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Columns worth printing: ids, hyperparameters that vary, headline metrics, runtime."""
    vary = [c for c in HYPER_COLUMNS if len({r.get(c) for r in rows}) > 1]
    head = [c for c in ("min_distr_cor", "mean_distr_cor", "mean_ll", "weighted_mean_ll", "mean_tv")
            if any(c in r for r in rows)]
    return rows, [*ID_COLUMNS, *vary, *head, "runtime_s"]
