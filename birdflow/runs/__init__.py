"""The run directory: the one place that knows what a run leaves behind and where.

A run dir (``outputs/<species>/<loss>/<timestamp>/`` by default) holds ``config.yaml`` (the
resolved config), ``run.json`` (status, references), ``model.nc`` + ``data.nc`` (the fitted
model), ``loss_history.csv``, ``metrics.json`` (the evaluation on the run's own tracks) and
``metrics_<source>.json`` (one per other tracks source), ``checkpoints/``, ``tb/``,
``inputs/`` (copies of the tracks and true chain it is scored on) and ``.lock``.

Paths inside ``run.json`` are stored relative to the run dir when they point into it, else
absolute, so a run dir reads the same from any working directory, after a move, or on another
machine (its inputs are copied in). Training, tuning, evaluation, sweeps, sparsify, export and
the Python API read and write these files only through this package.
"""

from birdflow.runs.config import read_config, read_job_config, resume_config, write_config
from birdflow.runs.history import read_history_csv, run_log, write_history_csv
from birdflow.runs.info import (
    find_run_dirs,
    is_run_dir,
    read_run_info,
    record_failure,
    run_path,
    write_run_info,
)
from birdflow.runs.inputs import adopt_inputs
from birdflow.runs.layout import CONFIG_YAML, HISTORY_CSV, METRICS_JSON, RUN_JSON
from birdflow.runs.lock import RunDirLocked, check_unlocked, locked
from birdflow.runs.metrics import metrics_file, model_stamp, read_metrics, write_metrics

__all__ = [
    "CONFIG_YAML", "HISTORY_CSV", "METRICS_JSON", "RUN_JSON", "RunDirLocked", "adopt_inputs",
    "check_unlocked", "find_run_dirs", "is_run_dir", "locked", "metrics_file", "model_stamp",
    "read_config", "read_history_csv", "resume_config", "read_job_config", "read_metrics", "read_run_info",
    "record_failure", "run_log", "run_path", "write_config", "write_history_csv",
    "write_metrics", "write_run_info",
]
