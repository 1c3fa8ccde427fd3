"""The model catalog of a batch: one row per model, as CSV, Markdown and ``index.html``.

Rows come from the batch dir's run dirs through the sweep summary
(:func:`birdflow.sweeps.summary.collect`: status, the first line of a failure, metrics,
hyperparameters), plus the species' name, resolution, cells, traits, how the weights were
chosen and the model's files (paths relative to the batch dir). A species whose config did
not even compose (``batch.json``'s ``rejected``) is a failed row without a run dir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from birdflow.batch.jobs import GEOTIFF_DIR, REPORT, THUMBNAIL
from birdflow.errors import DataError
from birdflow.io import write_text_atomic
from birdflow.runs import read_job_config, read_run_info
from birdflow.sweeps.summary import collect, write_table

CATALOG = "catalog"  # catalog.csv and catalog.md
INDEX = "index.html"
BATCH_JSON = "batch.json"  # the species of the last batch run and those rejected before running
METRICS = ("gain_over_null", "mean_ll", "mean_null_ll", "n_intervals", "min_distr_cor",
           "mean_tv", "truth_mean_ll_gain", "mean_win_prob")
TRAITS = ("family", "order", "body_mass_g", "migration_km")
FILES = ("hdf5", "geotiff", "report", "thumbnail")
BRIEF = ("species", "status", "resolution_km", "cells", "loss", "gain_over_null", "min_distr_cor",
         "truth_mean_ll_gain", "runtime_s", "error")  # what the commands print
COLUMNS = ("species", "status", "resolution_km", "cells", "loss", "obs_weight", "dist_weight",
           "ent_weight", "weights_from", *METRICS, *TRAITS, *FILES, "run", "runtime_s", "error")


def write_batch_record(batch_dir: Path, species: list[str], rejected: dict[str, str]) -> None:
    """``batch.json``: the species asked for and the ones rejected before any job ran."""
    write_text_atomic(Path(batch_dir) / BATCH_JSON, json.dumps(
        {"species": species, "rejected": rejected}, indent=2) + "\n")


def _read_batch_record(batch_dir: Path) -> dict:
    path = batch_dir / BATCH_JSON
    if not path.exists():
        return {"species": [], "rejected": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e}); delete it and rerun the batch") from None


def _override(overrides: str, key: str) -> str | None:
    for item in overrides.split():
        if item.startswith(f"{key}="):
            return item.split("=", 1)[1]
    return None


def _weights_from(overrides: str, cfg: dict, loss: str | None) -> str:
    if cfg.get("weights"):
        return f"tuned (weights={cfg['weights']})"
    set_here = [o for o in overrides.split()
                if o.startswith("hyper.") or (o.startswith("loss.") and "weight" in o)]
    if set_here:
        return "set in the batch (" + " ".join(set_here) + ")"
    return f"defaults of loss={loss or '?'}"


def _files(batch_dir: Path, run_dir: Path) -> dict:
    hdf5 = sorted(run_dir.glob("*.hdf5"))
    tif = sorted((run_dir / GEOTIFF_DIR).glob("*_model_distr.tif"))
    found = {"hdf5": hdf5[0] if hdf5 else None, "geotiff": tif[0] if tif else None,
             "report": run_dir / REPORT, "thumbnail": run_dir / THUMBNAIL}
    return {k: str(p.relative_to(batch_dir)) if p is not None and p.exists() else ""
            for k, p in found.items()}


def _row(batch_dir: Path, r: dict) -> dict:
    overrides = r.get("overrides") or ""
    run_dir = batch_dir / r["run"]
    saved = read_job_config(run_dir) if run_dir.is_dir() else None
    cfg = {} if saved is None else OmegaConf.to_container(saved, resolve=False)
    species_cfg = cfg.get("species") or {}
    traits = species_cfg.get("traits") or {}
    info = read_run_info(run_dir) if run_dir.is_dir() else {}
    gain = (info.get("gain_over_null") or {}).get("gain")
    row = {"species": _override(overrides, "species") or species_cfg.get("code"),
           "status": r.get("status"), "resolution_km": species_cfg.get("res_km"),
           "cells": r.get("n_cells"), "loss": r.get("loss") or _override(overrides, "loss"),
           "obs_weight": r.get("obs_weight"), "dist_weight": r.get("dist_weight"),
           "ent_weight": r.get("ent_weight"), "gain_over_null": gain,
           **{m: r.get(m) for m in METRICS if m != "gain_over_null"},
           **{t: traits.get(t) for t in TRAITS},
           "run": r["run"], "runtime_s": r.get("runtime_s"), "error": r.get("error") or ""}
    row["weights_from"] = _weights_from(overrides, cfg, row["loss"])
    row.update(_files(batch_dir, run_dir) if run_dir.is_dir() else dict.fromkeys(FILES, ""))
    if row["status"] == "failed" and not row["error"]:
        row["error"] = "failed before training recorded a reason; see the job's log"
    return row


def catalog_rows(batch_dir: str | os.PathLike) -> list[dict]:
    """One row per model of the batch (and per species rejected before running), by species."""
    batch_dir = Path(batch_dir)
    record = _read_batch_record(batch_dir)
    try:
        rows = [_row(batch_dir, r) for r in collect(batch_dir)]
    except DataError:
        if not record["species"]:
            raise
        rows = []  # no job got as far as its run dir
    seen = {r["species"] for r in rows}
    for name in record["species"]:
        if name not in seen:
            why = record["rejected"].get(name)
            rows.append({**dict.fromkeys(COLUMNS, ""), "species": name,
                         "status": "failed" if why else "missing",
                         "error": why or "no job ran for it; see the batch's error output"})
    return sorted(rows, key=lambda r: (str(r["species"]), str(r.get("loss"))))


def write_catalog(batch_dir: str | os.PathLike) -> list[dict]:
    """Write ``catalog.csv``, ``catalog.md`` and ``index.html`` into the batch dir."""
    from birdflow.batch.html import write_index

    batch_dir = Path(batch_dir)
    rows = catalog_rows(batch_dir)
    write_table(rows, list(COLUMNS), batch_dir / CATALOG)
    write_index(rows, batch_dir / INDEX)
    return rows
