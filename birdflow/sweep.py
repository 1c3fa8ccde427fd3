"""Hyperparameter sweeps: ``python -m birdflow.sweep summarize <sweep dir>``.

A sweep is a Hydra multirun of ``python -m birdflow.train -m ...`` (launchers in
``conf/hydra/launcher/``: ``local`` = joblib, ``slurm`` = submitit). Each job writes a run dir
``<sweep dir>/<num>_<species>_<loss>/``; ``summarize`` collects them into one table
(``summary.csv``/``.md``), picks the best model per species (:mod:`birdflow.selection`) and draws
metric-vs-hyperparameter plots. Training calls :func:`apply_hyper` (the de_ratio/obs_prop grid
parameterisation) and :func:`job_failure` (a job that raised is recorded as failed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from birdflow.errors import BirdFlowError, ConfigError, DataError
from birdflow.rundir import CONFIG_YAML, RUN_JSON, read_run_info, write_run_info

HYPER_COLUMNS = ("obs_weight", "dist_weight", "ent_weight", "dist_pow", "de_ratio", "obs_prop",
                 "learning_rate", "steps")
ID_COLUMNS = ("run", "species", "loss", "status")
TAIL_COLUMNS = ("runtime_s", "steps_done", "overrides", "error")
TIMING_COLUMNS = ("runtime_s",)


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


def _job_run_dir(cfg: Mapping) -> Path | None:
    """The run dir a training job writes to (mirrors birdflow.train's choice)."""
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
    if cfg.get("resume") or run_dir is None or not (run_dir / RUN_JSON).exists():
        return
    status = read_run_info(run_dir).get("status", "?")
    raise RunDirTaken(f"{run_dir}: already holds a run (status {status}); add resume=true to "
                      "continue/skip it, or choose another run_dir / hydra.sweep.dir")


def job_failure(cfg: Mapping, exc: BaseException) -> BaseException:
    """Record a job that raised as failed in its run.json; return the exception to re-raise.

    ``birdflow.train.main`` calls it for anything raised by check_fresh_run_dir or train.
    In a multirun, Hydra marks a job failed (and the sweep goes on) only for an ``Exception``:
    a ``KeyboardInterrupt`` from ``debug.raise_after_step`` (a simulated kill) becomes a
    RuntimeError there. A BirdFlowError in a single run becomes a one-line ``SystemExit``.
    """
    run_dir = _job_run_dir(cfg)
    message = f"{type(exc).__name__}: {exc}"
    if run_dir is not None and not isinstance(exc, RunDirTaken):  # never touch another's run
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, status="failed", error=message,
                       failed_at=datetime.now(UTC).isoformat(timespec="seconds"),
                       traceback="".join(traceback.format_exception(exc))[-4000:])
    multirun = _is_multirun()
    if isinstance(exc, BirdFlowError) and not multirun:
        return SystemExit(f"error: {exc}")
    debug = (cfg.get("debug") or {}).get("raise_after_step")
    if multirun and isinstance(exc, KeyboardInterrupt) and debug is not None:
        return RuntimeError(f"job interrupted by {exc}")
    return exc


def _num(x):
    """A finite float, or None for missing/non-numeric/NaN values."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _load_yaml(path: Path) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # noqa: BLE001 - any parse problem is reported the same way
        raise DataError(f"{path}: cannot be read as YAML ({e}); delete the run or fix the file") from e


def _hyper_values(cfg: dict) -> dict:
    loss, optim, hyper = cfg.get("loss", {}), cfg.get("optim", {}), cfg.get("hyper") or {}
    out = {k: _num(loss.get(k)) for k in ("obs_weight", "dist_weight", "ent_weight", "dist_pow")}
    out["learning_rate"], out["steps"] = _num(optim.get("learning_rate")), _num(optim.get("steps"))
    d, e, o = out["dist_weight"], out["ent_weight"], out["obs_weight"]
    # as BirdFlowPipeline's metrics table: de_ratio to 3, obs_prop to 4 significant digits
    out["de_ratio"] = _num(hyper.get("de_ratio")) or (signif(d / e, 3) if d is not None and e else None)
    out["obs_prop"] = _num(hyper.get("obs_prop")) or (
        signif(o / (o + d + e), 4) if None not in (o, d, e) and o + d + e > 0 else None)
    return out


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Run dirs (run.json) and Hydra job dirs (.hydra/) below the sweep dir, job order."""
    found = {p.parent for p in sweep_dir.rglob(RUN_JSON)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    found = {d for d in found if ".submitit" not in d.parts}

    def key(d: Path):
        head = d.name.split("_", 1)[0]
        return (0, int(head), str(d)) if head.isdigit() else (1, 0, str(d))

    return sorted(found, key=key)


def _expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """Each job's overrides as Hydra's basic sweeper expands ``multirun.yaml`` (job num order)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(path)
    params = [f"{k}={v}" for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()]
    task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    try:
        overrides = OverridesParser.create().parse_overrides(params + task)
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # noqa: BLE001 - another sweeper's syntax: no expected-job list
        return []


def _row(sweep_dir: Path, run_dir: Path) -> dict:
    info = read_run_info(run_dir)
    cfg_path = run_dir / CONFIG_YAML
    if not cfg_path.exists():
        cfg_path = run_dir / ".hydra" / "config.yaml"
    cfg = _load_yaml(cfg_path) if cfg_path.exists() else {}
    overrides = run_dir / ".hydra" / "overrides.yaml"
    metrics_path = run_dir / "metrics.json"
    metrics = {}
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text()).get("summary", {})
        except json.JSONDecodeError as e:
            raise DataError(f"{metrics_path}: not valid JSON ({e}); re-run "
                            f"`python -m birdflow.evaluate run={run_dir}`") from e
    row = {"run": str(run_dir.relative_to(sweep_dir)),
           "species": info.get("species") or cfg.get("species", {}).get("code"),
           "loss": info.get("loss") or cfg.get("loss", {}).get("location"),
           "status": info.get("status", "missing"), **_hyper_values(cfg)}
    row.update({f"{k}": _num(v) for k, v in metrics.items() if _num(v) is not None})
    row["runtime_s"] = _num(info.get("runtime_s"))
    row["steps_done"] = _num(info.get("steps_done"))
    row["overrides"] = " ".join(_load_yaml(overrides)) if overrides.exists() else ""
    row["error"] = (info.get("error") or "").splitlines()[0][:200] if info.get("error") else ""
    return row


def collect(sweep_dir: str | os.PathLike) -> list[dict]:
    """One row per job of the sweep: ids, hyperparameters, metrics summary, status, runtime.

    Jobs that ``multirun.yaml`` expects but that left no directory show as ``missing``.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: no such sweep directory; pass the hydra.sweep.dir of a multirun")
    rows = [_row(sweep_dir, d) for d in _job_dirs(sweep_dir)]
    done = {r["overrides"] for r in rows}
    for num, job in enumerate(_expected_jobs(sweep_dir)):
        if " ".join(job) not in done:
            rows.append({"run": f"{num}_(not started)", "status": "missing", "overrides": " ".join(job)})
    if not rows:
        raise DataError(f"{sweep_dir}: no run directories (run.json) below it; is it a sweep dir "
                        "written by `python -m birdflow.train -m ...`?")
    return rows


def columns(rows: list[dict]) -> list[str]:
    """Table columns: ids, hyperparameters, metrics (first-seen order), timing and notes."""
    fixed = set(ID_COLUMNS) | set(HYPER_COLUMNS) | set(TAIL_COLUMNS)
    metrics = list(dict.fromkeys(k for r in rows for k in r if k not in fixed))
    return [*ID_COLUMNS, *HYPER_COLUMNS, *metrics, *TAIL_COLUMNS]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"
    return str(v)


def markdown(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], cols: list[str], path: Path) -> None:
    """``path``.csv and ``path``.md, written atomically."""
    import csv
    import io

    from birdflow.io import write_text_atomic

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    writer.writerows([_fmt(r.get(c)) for c in cols] for r in rows)
    write_text_atomic(path.with_suffix(".csv"), buf.getvalue())
    write_text_atomic(path.with_suffix(".md"), markdown(rows, cols))


def summarize(sweep_dir: str | os.PathLike, threshold: float = 0.9, cor_metric: str = "min_distr_cor",
              plots: bool = True) -> tuple[list[dict], list[dict]]:
    """Write summary.csv/.md, best_models.csv/.md and plots/ into the sweep dir.

    Returns:
        (rows, best): the summary rows and the chosen models (one row per species and criterion).
    """
    from birdflow.selection import best_models, plot_tuning

    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    write_table(rows, columns(rows), sweep_dir / "summary")
    best = best_models(rows, threshold=threshold, cor_metric=cor_metric)
    best_cols = list(dict.fromkeys(k for b in best for k in b))
    write_table(best, best_cols, sweep_dir / "best_models")
    if plots:
        plot_tuning(rows, sweep_dir / "plots")
    return rows, best


def _brief(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Columns worth printing: ids, hyperparameters that vary, headline metrics, runtime."""
    vary = [c for c in HYPER_COLUMNS if len({r.get(c) for r in rows}) > 1]
    head = [c for c in ("min_distr_cor", "mean_distr_cor", "mean_ll", "weighted_mean_ll", "mean_tv")
            if any(c in r for r in rows)]
    return rows, [*ID_COLUMNS, *vary, *head, "runtime_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m birdflow.sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="table, best models and plots of a sweep dir")
    s.add_argument("sweep_dir", type=Path)
    s.add_argument("--threshold", type=float, default=0.9,
                   help="keep models with <cor-metric> > threshold before ranking (default 0.9)")
    s.add_argument("--cor-metric", default="min_distr_cor", help="metric the threshold applies to")
    s.add_argument("--no-plots", action="store_true", help="skip the metric-vs-hyperparameter PNGs")
    args = parser.parse_args(argv)
    try:
        rows, best = summarize(args.sweep_dir, args.threshold, args.cor_metric, not args.no_plots)
    except BirdFlowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(*_brief(rows)))
    print("best models:")
    print(markdown(best, [c for c in ("species", "criterion", "run", "loss", "value", "note")
                          if any(c in b for b in best)]))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "running", "missing")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; tables in {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
