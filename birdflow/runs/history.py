"""A run's loss history (``loss_history.csv``) and its log file (``train.log``)."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from birdflow.io import write_text_atomic
from birdflow.runs.layout import HISTORY_CSV


def write_history_csv(run_dir: str | os.PathLike, history: dict[str, list]) -> Path:
    """Write the per-step loss history as CSV (columns in insertion order, 'step' first)."""
    cols = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    writer.writerows(zip(*(history[c] for c in cols), strict=True))
    return write_text_atomic(Path(run_dir) / HISTORY_CSV, buf.getvalue())


def read_history_csv(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """Loss history written by :func:`write_history_csv` as {column: values} ({} when absent)."""
    path = Path(run_dir) / HISTORY_CSV
    if not path.exists():
        return {}
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
