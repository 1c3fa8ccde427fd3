"""Run directories: what a training run leaves behind for evaluate/routes/maps/export/resume.

``outputs/<species>/<loss>/<timestamp>/`` holds ``config.yaml`` (resolved config), ``run.json``
(status, data reference, tracks/truth references), ``model.nc`` + ``data.nc`` (fitted model),
``loss_history.csv``, ``loss_curve.png``, ``checkpoints/`` and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from birdflow.errors import DataError
from birdflow.io import write_text_atomic

RUN_JSON = "run.json"
HISTORY_CSV = "loss_history.csv"
CONFIG_YAML = "config.yaml"


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """The run's ``run.json`` (empty dict for a model folder without one, e.g. an import)."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run training or fix the file") from e


def write_run_info(run_dir: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into ``run.json`` (atomic) and return the result."""
    info = read_run_info(run_dir)
    info.update(fields)
    write_text_atomic(Path(run_dir) / RUN_JSON, json.dumps(info, indent=2, default=str) + "\n")
    return info


def write_history_csv(run_dir: str | os.PathLike, history: dict[str, list]) -> Path:
    """Write the per-step loss history as CSV (columns in insertion order, 'step' first)."""
    cols = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    writer.writerows(zip(*(history[c] for c in cols), strict=True))
    return write_text_atomic(Path(run_dir) / HISTORY_CSV, buf.getvalue())


def read_history_csv(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """Loss history written by :func:`write_history_csv` as {column: values}."""
    path = Path(run_dir) / HISTORY_CSV
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


@contextlib.contextmanager
def run_log(run_dir: Path, name: str = "train.log") -> Iterator[Path]:
    """Append the ``birdflow.*`` log records (INFO and up) to ``<run_dir>/<name>`` meanwhile."""
    path = Path(run_dir) / name
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("birdflow")
    old_level = logger.level
    if old_level == logging.NOTSET or old_level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
