"""Evaluation results in a run dir: one file per tracks source.

``metrics.json`` is the evaluation on the run's own tracks (written after training, and by
``birdflow evaluate run=<dir>``); scoring the run on another tracks file writes
``metrics_<file stem>.json`` beside it and never touches ``metrics.json``, which sweep
summaries read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from birdflow.errors import DataError
from birdflow.io import write_text_atomic
from birdflow.runs.info import run_path
from birdflow.runs.layout import METRICS_JSON, METRICS_PREFIX, MODEL_NC


def _same_file(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def metrics_file(run_dir: str | os.PathLike, tracks: str | os.PathLike | None = None) -> Path:
    """Where an evaluation of ``run_dir`` on ``tracks`` goes (None: the run's own tracks)."""
    run_dir = Path(run_dir)
    if tracks is None or _same_file(Path(tracks), run_path(run_dir, "tracks")):
        return run_dir / METRICS_JSON
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(tracks).stem).strip("._") or "tracks"
    return run_dir / f"{METRICS_PREFIX}{stem}.json"


def model_stamp(run_dir: str | os.PathLike) -> str | None:
    """Size and modification time of the run's model file: metrics computed with the same
    stamp are of this very model."""
    path = Path(run_dir) / MODEL_NC
    if not path.exists():
        return None
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def write_metrics(path: Path, result: dict) -> Path:
    """Write an evaluation result (atomic; strict JSON, no NaN)."""
    return write_text_atomic(path, json.dumps(result, indent=2, allow_nan=False) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """The run's own ``metrics.json`` ({} when it was not evaluated)."""
    path = Path(run_dir) / METRICS_JSON
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run "
                        f"`birdflow evaluate run={run_dir}`") from None
