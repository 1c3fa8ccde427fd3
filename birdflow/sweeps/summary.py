"""The summary table of a sweep: one row per job, from the run dirs below the sweep dir.

Each row holds the run (path relative to the sweep dir), species, loss, status (finished,
failed, running, or missing: a job Hydra's sweeper expects that left no run.json), the
hyperparameters from the run's ``config.yaml``, the flat metrics of ``metrics.json["summary"]``,
runtime_s, steps_done, the job's overrides and, for a failed run, the first line of its error.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from birdflow.errors import DataError
from birdflow.runs import find_run_dirs, read_job_config, read_metrics, read_run_info
from birdflow.training.settings import signif

HYPER_COLUMNS = ("obs_weight", "dist_weight", "ent_weight", "dist_pow", "de_ratio", "obs_prop",
                 "learning_rate", "steps")
ID_COLUMNS = ("run", "species", "loss", "status")
TAIL_COLUMNS = ("runtime_s", "steps_done", "overrides", "error")
TIMING_COLUMNS = ("runtime_s",)


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
    found = find_run_dirs(sweep_dir)
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
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(path)
    params = [f"{k}={v}" for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()]
    task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    try:
        overrides = OverridesParser.create().parse_overrides(params + task)
        choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                   if o.is_sweep_override()
                   else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in overrides]
    except Exception:  # noqa: BLE001 - another sweeper's syntax: no expected-job list
        return []
    # the basic sweeper's order: the cartesian product, the last override varying fastest
    return [list(job) for job in itertools.product(*choices)]


def _row(sweep_dir: Path, run_dir: Path) -> dict:
    info = read_run_info(run_dir)
    saved = read_job_config(run_dir)
    cfg = OmegaConf.to_container(saved, resolve=False) if saved is not None else {}
    overrides = run_dir / ".hydra" / "overrides.yaml"
    metrics = read_metrics(run_dir).get("summary", {})
    row = {"run": str(run_dir.relative_to(sweep_dir)),
           "species": info.get("species") or cfg.get("species", {}).get("code"),
           "loss": info.get("loss") or cfg.get("loss", {}).get("location"),
           "status": info.get("status", "missing"), **_hyper_values(cfg)}
    row.update({f"{k}": _num(v) for k, v in metrics.items() if _num(v) is not None})
    row["runtime_s"] = _num(info.get("runtime_s"))
    row["steps_done"] = _num(info.get("steps_done"))
    row["overrides"] = " ".join(_load_yaml(overrides)) if overrides.exists() else ""
    failed = row["status"] == "failed" and info.get("error")  # a resumed run keeps the old error
    row["error"] = info["error"].splitlines()[0][:200] if failed else ""
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


