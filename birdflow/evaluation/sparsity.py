"""What sparsifying costs: density, mass lost, fit to S&T and interval log-likelihood.

``sparsify_report(model, tracks)`` sparsifies the model with each of BirdFlowR's methods at
its default (p = 0.99, p_protected = 0.10, fix = True) and scores the full and the sparse
models on the same intervals. ``mean_ll`` uses BirdFlowR's ``calc_interval_metrics`` floor,
``log(p + 1e-8)``, over every interval the full model can score, so an interval the sparse
model makes impossible counts (as log 1e-8 = -18.4) instead of silently leaving the mean;
``n_impossible`` counts those.

Command: ``birdflow sparsify run=<dir>`` (``python -m birdflow.sparsify``) prints the table
and can write a sparse copy of the model as a new run dir (:func:`write_sparse_run`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from birdflow.data.tracks import Tracks, load_tracks
from birdflow.evaluation.intervals import score_intervals
from birdflow.evaluation.metrics import distribution_performance
from birdflow.model.fitted import BirdFlowModel, save_model
from birdflow.model.sparsify import METHODS, density, sparsify
from birdflow.runs import read_run_info, run_path, write_run_info

LL_FLOOR = 1e-8  # BirdFlowR's calc_interval_metrics floor


def _interval_ll(model: BirdFlowModel, intervals: pd.DataFrame) -> np.ndarray:
    """log(p(end) + 1e-8) of each interval (intervals pre-filtered to scorable ones)."""
    scored = score_intervals(model, intervals, win_prob=False)
    p = np.exp(scored["ll"].to_numpy(dtype=float))
    return np.log(np.nan_to_num(p, nan=0.0) + LL_FLOOR)


def sparsify_report(model: BirdFlowModel, tracks: Tracks | str | os.PathLike | None = None,
                    methods=METHODS, p: float = 0.99) -> pd.DataFrame:
    """One row for the full model and one per method: density and what was lost.

    Columns: ``model``, ``density`` (non-zero fraction of the possible joint entries),
    ``pct_density_lost`` (% of joint mass removed), ``max_distr_tv`` (largest change of a
    week's distribution), ``mean_distr_cor``/``min_distr_cor`` (fit to S&T), and with tracks
    ``n_intervals``, ``mean_ll`` (floored, see module doc), ``mean_null_ll``, ``n_impossible``.
    """
    intervals = None
    if tracks is not None:
        if not isinstance(tracks, Tracks):
            tracks = load_tracks(tracks, model.data, cyclic=model.cyclic, warn=False)
        full = score_intervals(model, tracks.intervals, win_prob=False)
        ok = full["exclude"] == ""
        intervals = tracks.intervals[ok.to_numpy()].reset_index(drop=True)
        null_ll = float(full.loc[ok, "null_ll"].mean())
    rows = []
    for name in ("full", *methods):
        m, stats = (model, {"pct_density_lost": 0.0, "max_distr_tv": 0.0}) if name == "full" \
            else sparsify(model, name, p)
        perf = distribution_performance(m)
        row = {"model": name, "density": density(m), "pct_density_lost": stats["pct_density_lost"],
               "max_distr_tv": stats["max_distr_tv"], "mean_distr_cor": perf["mean_distr_cor"],
               "min_distr_cor": perf["min_distr_cor"]}
        if intervals is not None:
            ll = _interval_ll(m, intervals)
            row |= {"n_intervals": len(ll), "mean_ll": float(ll.mean()), "mean_null_ll": null_ll,
                    "n_impossible": int((ll <= np.log(LL_FLOOR) + 1e-9).sum())}
        rows.append(row)
    return pd.DataFrame(rows)


def write_sparse_run(model: BirdFlowModel, run_dir: str | os.PathLike, out: str | os.PathLike,
                     method: str, p: float = 0.99, fix: bool = True,
                     p_protected: float = 0.10) -> Path:
    """Sparsify the model of ``run_dir`` with ``method`` and save it as a new run dir ``out``.

    ``out`` gets model.nc, data.nc and a run.json that copies the source run's and records
    ``sparsified_from`` and the sparsify statistics; every command reads it like a trained run.
    """
    sparse, stats = sparsify(model, method, float(p), fix=bool(fix), p_protected=float(p_protected))
    info = read_run_info(run_dir)
    out = Path(out)
    save_model(sparse, out)
    refs = {k: run_path(run_dir, k, info) for k in ("tracks", "truth", "data_path")}
    write_run_info(out, **{**info, **refs, "status": "finished",
                           "sparsified_from": Path(run_dir), "sparse": stats})
    return out
