"""File names inside a run directory (nothing outside :mod:`birdflow.runs` spells them)."""

from __future__ import annotations

RUN_JSON = "run.json"            # status, species, loss, references (paths), timings
CONFIG_YAML = "config.yaml"      # the resolved config the run was made with
HISTORY_CSV = "loss_history.csv"
MODEL_NC = "model.nc"            # the fitted model (written by birdflow.model.modelfile)
METRICS_JSON = "metrics.json"    # evaluation on the run's own tracks (written after training)
METRICS_PREFIX = "metrics_"      # metrics_<source>.json: evaluation on another tracks file
LOCK = ".lock"                   # held (flock) while a process trains into the run dir
INPUTS = "inputs"                # copies of the tracks and the true chain the run is scored on
HYDRA_JOB_CONFIG = (".hydra", "config.yaml")  # a Hydra job dir's config (sweeps)
