"""Evaluate a fitted model: fit to S&T, distribution performance, tracking-data intervals, truth.

``python -m birdflow.evaluate run=<run dir> [tracks=<csv>] [truth=<run dir>]`` loads the
model, takes tracks/truth from ``run.json`` when not given, writes ``metrics.json`` into the
run dir and prints a table. Interval metrics follow BirdFlowR's ``interval_log_likelihood``
exclusions and ``calc_interval_metrics`` scores (birdflow_reference.md sections 3.2 and 3.4).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr

from birdflow.data.tracks import EXCLUDE_REASONS, Tracks, load_tracks, read_tracks
from birdflow.errors import DataError
from birdflow.evaluation.intervals import SCORE_COLUMNS, interval_summary, score_intervals
from birdflow.evaluation.metrics import (
    W2_SUMMARY,
    W2_THRESHOLD,
    distribution_performance,
    fit_metrics,
    w2_summary,
)
from birdflow.evaluation.seasons import migration_seasons, season_performance
from birdflow.model.fitted import BirdFlowModel, load_model
from birdflow.model.joints import Transitions
from birdflow.model.sampling import slot_of
from birdflow.runs import metrics_file, model_stamp, read_run_info, run_path, write_metrics

log = logging.getLogger(__name__)


def grid_difference(a: xr.Dataset, b: xr.Dataset) -> str:
    """'' when two BirdFlowData share grid, cells and weeks, else what differs."""
    if a["static_mask"].shape != b["static_mask"].shape:
        return f"grid shapes differ ({a['static_mask'].shape} vs {b['static_mask'].shape})"
    if not (np.allclose(a["x"].values, b["x"].values) and np.allclose(a["y"].values, b["y"].values)):
        return "grid cell centres differ"
    if not np.array_equal(a["static_mask"].values, b["static_mask"].values):
        return "static masks (active cells) differ"
    if not np.array_equal(a["week"].values, b["week"].values):
        return "weeks differ"
    return ""


def _transition_rows(model: BirdFlowModel, t: int, cells_from: np.ndarray,
                     cells_to: np.ndarray):
    """(len(cells_from), len(cells_to)) rows of the row-stochastic transition t on those cells
    (cells outside the model's weeks get 0): a dense array for a dense model, a CSR array for
    a neighbourhood-sparse one (never a densified week: 2.6 GB at 18,000 cells)."""
    idx = model.index
    P = Transitions(idx, model.marginals).matrix(t)  # slot layout, (n_max, n_max)
    slot_f, slot_t = (slot_of(idx.slot_cell[w % idx.n_weeks], model.n_cells)
                      for w in (t, t + 1))
    fi, ti = slot_f[cells_from], slot_t[cells_to]
    rf, ct = np.flatnonzero(fi >= 0), np.flatnonzero(ti >= 0)
    if not sp.issparse(P):
        out = np.zeros((len(cells_from), len(cells_to)))
        out[np.ix_(rf, ct)] = P[np.ix_(fi[rf], ti[ct])]
        return out
    pick_rows = sp.csr_array((np.ones(rf.size), (rf, fi[rf])), shape=(len(cells_from), P.shape[0]))
    pick_cols = sp.csr_array((np.ones(ct.size), (ti[ct], ct)), shape=(P.shape[1], len(cells_to)))
    return (pick_rows @ P @ pick_cols).tocsr()


def transition_tv(model: BirdFlowModel, truth: BirdFlowModel) -> float:
    """sum_t sum_i mu_true_t(i) TV(P_t(i, .), P_true_t(i, .)) / T over the T transitions.

    A cell the true chain visits but the learned one leaves no mass in (empty row) counts as
    TV = 1. Both models must be on the same grid (see :func:`grid_difference`); either may
    be neighbourhood-sparse: each week compares the rows of the truth's week-t cells over
    both models' week-(t + 1) cells, as sparse arrays when both models are sparse.
    """
    total = 0.0
    for t in range(truth.n_transitions):
        weeks = [m.index.slot_cell[w % m.index.n_weeks] for m in (model, truth)
                 for w in (t, t + 1)]
        cells_from = weeks[2][weeks[2] >= 0]
        cells_to = np.union1d(weeks[1][weeks[1] >= 0], weeks[3][weeks[3] >= 0])
        P = _transition_rows(model, t, cells_from, cells_to)
        P_true = _transition_rows(truth, t, cells_from, cells_to)
        if sp.issparse(P) != sp.issparse(P_true):  # one dense model: compare densely
            P, P_true = (x.toarray() if sp.issparse(x) else x for x in (P, P_true))
        diff = abs(P - P_true)
        tv = 0.5 * np.asarray(diff.sum(axis=1)).ravel()
        tv = np.where(np.asarray(P.sum(axis=1)).ravel() > 0, tv, 1.0)
        total += float(truth.distr_at(t)[cells_from] @ tv)
    return total / truth.n_transitions


def _as_model(m: BirdFlowModel | str | os.PathLike | None) -> BirdFlowModel | None:
    return m if m is None or isinstance(m, BirdFlowModel) else load_model(m)


def _clean(v):
    """JSON-safe scalars: numpy -> python, NaN/inf -> None."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    return v


def evaluate_model(model: BirdFlowModel, tracks: Tracks | str | os.PathLike | None = None,
                   truth: BirdFlowModel | str | os.PathLike | None = None, *,
                   week_range: tuple[int, int] | None = None, w2: bool = True,
                   w2_epsilon: float | None = None, win_prob: bool = True,
                   min_days: float | None = None, max_days: float | None = None,
                   min_km: float | None = None, max_km: float | None = None,
                   seasons: dict[str, tuple[int, int]] | None = None) -> dict:
    """All metrics of one model as a JSON-serialisable dict.

    Args:
        model: the fitted model.
        tracks: a tracks CSV path (read with :func:`birdflow.data.tracks.load_tracks`) or
            :class:`Tracks` already built on ``model.data``.
        truth: the true chain (model or run dir) of a synthetic species, same grid.
        week_range: (first, last) S&T weeks for extra ``range_*`` distribution metrics.
        w2, w2_epsilon: compute the Sinkhorn W2 fit, blur in (1000 km)^2 (None: a tenth of a
            cell, :func:`birdflow.evaluation.metrics.w2_epsilon`).
        win_prob: compute win_prob (O(n log n) per interval).
        min_days, max_days, min_km, max_km: interval window; None (default) = no bound, as
            BirdFlowR's ``interval_log_likelihood`` (no day cap). The rule used is written to
            ``intervals.rules`` in the result.
        seasons: {"prebreeding": (first, last), "postbreeding": ...} S&T weeks of the
            migrations for BirdFlowPipeline's per-season metrics (``min_dist_cor`` ...);
            default: from the data's species season dates, widened by one week.

    Returns:
        {"summary": flat scalars, "per_week": {name: list}, "intervals": {"n_scored",
        "n_zero_probability", "excluded": {reason: count}, "rules", ...}, "notes": [str]};
        NaN is written as None.
    """
    window = {"min_days": min_days, "max_days": max_days, "min_km": min_km, "max_km": max_km}
    rules = window | {"convention": "BirdFlowR interval_log_likelihood (no day or km window)"
                      if all(v is None for v in window.values()) else "custom window",
                      "zero_probability": "scored with log(p + 1e-8) (BirdFlowR "
                                          "calc_interval_metrics)"}
    t0 = time.perf_counter()
    log.info("evaluating: fit to S&T per week%s", f" (W2: {model.index.n_weeks} Sinkhorn solves, "
             "the slow part; w2=false skips them)" if w2 else "")
    fit = fit_metrics(model, w2=w2, epsilon=w2_epsilon)
    log.info("evaluating: fit to S&T done in %.0f s; distribution performance, seasons%s",
             time.perf_counter() - t0, ", truth" if truth is not None else "")
    perf = distribution_performance(model)
    summary = {"n_weeks": model.index.n_weeks, "n_cells": model.n_cells,
               "mean_l2": float(fit["l2"].mean()), "mean_tv": float(fit["tv"].mean()),
               **(w2_summary(fit) if w2 else dict.fromkeys(W2_SUMMARY))}
    summary |= {k: v for k, v in perf.items() if np.isscalar(v)}
    seasons = migration_seasons(model.data) if seasons is None else seasons
    season_metrics, notes = season_performance(model, seasons)
    summary |= season_metrics
    if week_range is not None:
        rng = distribution_performance(model, week_range)
        summary |= {f"range_{k}": v for k, v in rng.items() if np.isscalar(v)}
    per_week = {"week": model.data["week"].values, "l2": fit["l2"], "tv": fit["tv"],
                "distr_cor": perf["distr_cor"], "single_step_cor": perf["single_step_cor"]}
    if w2:
        per_week |= {"w2": fit["w2"], "w2_converged": fit["w2_converged"], "w2_error": fit["w2_error"]}
        if not fit["w2_converged"].all():
            notes.append(f"Sinkhorn did not converge for {summary['n_w2_unconverged']} week(s) "
                         f"(L1 marginal error up to {summary['max_w2_error']:.2g}, threshold "
                         f"{W2_THRESHOLD:g}): their W2 is not exact and mean_w2/max_w2 leave them "
                         "out; pass a larger w2_epsilon")
    truth = _as_model(truth)
    why = grid_difference(model.data, truth.data) if truth is not None else "no truth given"
    if truth is not None and not why and truth.n_transitions != model.n_transitions:
        why = f"{truth.n_transitions} vs {model.n_transitions} transitions"
    if truth is not None and why:
        notes.append(f"truth metrics skipped: {why}")
    summary["truth_transition_tv"] = None if why else transition_tv(model, truth)
    intervals_out: dict = {"n_scored": 0, "n_zero_probability": 0,
                           "excluded": {r: 0 for r in EXCLUDE_REASONS}, "rules": rules}
    scored = None
    if tracks is not None:
        log.info("evaluating: interval log-likelihood of the tracks%s",
                 " and win probability" if win_prob else "")
        if not isinstance(tracks, Tracks):
            tracks = load_tracks(tracks, model.data, cyclic=model.cyclic, **window)
        else:
            rules["convention"] = "intervals as built by the caller (a Tracks object was given)"
        scored = score_intervals(model, tracks.intervals, win_prob=win_prob)
        counts = scored["exclude"].value_counts()
        ok = scored["exclude"] == ""
        intervals_out = {"n_scored": int(ok.sum()),
                         "n_zero_probability": int(scored["zero_probability"][ok].sum()),
                         "excluded": {r: int(counts.get(r, 0)) for r in EXCLUDE_REASONS},
                         "rules": rules,
                         "n_rows": len(tracks.rows),
                         "n_rows_left_out": int((tracks.rows["problem"] != "").sum()),
                         "source": tracks.source}
    summary |= interval_summary(scored if scored is not None else
                                pd.DataFrame(columns=["exclude", *SCORE_COLUMNS]))
    summary["truth_mean_ll"] = summary["truth_mean_ll_gain"] = None
    if scored is not None and truth is not None and not why:
        kept = scored[scored["exclude"] == ""]
        true_scored = score_intervals(truth, kept[list(tracks.intervals.columns)], win_prob=False)
        ok = true_scored["exclude"] == ""
        summary["truth_mean_ll"] = float(true_scored["ll"][ok].mean()) if ok.any() else None
        summary["truth_mean_ll_gain"] = float(true_scored["ll_gain"][ok].mean()) if ok.any() else None
        n_zero = int(true_scored["zero_probability"][ok].sum())
        if n_zero:
            notes.append(f"{n_zero} interval(s) have zero probability under the truth "
                         "(scored with the 1e-8 floor)")
    log.info("evaluated in %.0f s", time.perf_counter() - t0)
    return _clean({"summary": summary, "per_week": per_week, "intervals": intervals_out,
                   "notes": notes})


def format_report(result: dict) -> str:
    """Readable text: one line per summary metric, then the per-week fit table."""
    def fmt(v):
        return "—" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = [f"{'metric':<34} value"]
    lines += [f"{k:<34} {fmt(v)}" for k, v in result["summary"].items()]
    lines.append("intervals excluded: " + ", ".join(
        f"{r}={n}" for r, n in result["intervals"]["excluded"].items() if n) or "none")
    pw = result["per_week"]
    cols = [c for c in ("l2", "tv", "w2", "distr_cor", "single_step_cor") if c in pw]
    lines.append("")
    lines.append("week " + " ".join(f"{c:>15}" for c in cols))
    for i, week in enumerate(pw["week"]):
        lines.append(f"{week:>4} " + " ".join(f"{fmt(pw[c][i]):>15}" for c in cols))
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def evaluate_run(run_dir: str | os.PathLike, model: BirdFlowModel | None = None,
                 tracks: str | os.PathLike | None = None,
                 truth: str | os.PathLike | None = None, **opts) -> dict:
    """Evaluate a run dir and write the result there (atomic); returns it, with ``metrics_file``.

    ``model`` defaults to the run's saved model; tracks and truth default to the references in
    its ``run.json``. On the run's own tracks the result goes to ``metrics.json``; on another
    tracks file to ``metrics_<file stem>.json`` (:func:`birdflow.runs.metrics_file`), so the
    training's own metrics are never overwritten. ``opts`` go to :func:`evaluate_model`.

    Raises:
        DataError: ``tracks`` was given and none of its rows could be scored.
    """
    run_dir = Path(run_dir)
    model = load_model(run_dir) if model is None else model
    info = read_run_info(run_dir)
    given = Path(tracks) if tracks else None
    tracks = given or run_path(run_dir, "tracks", info)
    truth = Path(truth) if truth else run_path(run_dir, "truth", info)
    out = metrics_file(run_dir, given)
    if tracks is not None:  # a file that is not a tracks CSV fails before the slow part
        rows = read_tracks(tracks)
        if given is not None and out.name != metrics_file(run_dir).name \
                and not (rows["problem"] == "").any():
            first = rows["problem"].iloc[0] if len(rows) else "no data rows"
            raise DataError(f"{given}: none of its {len(rows)} rows is usable (line "
                            f"{rows['line'].iloc[0] if len(rows) else 2}: {first}); fix the file "
                            "(columns bird_id,date,lat,lon); nothing written")
    result = evaluate_model(model, tracks, truth, **opts)
    result |= {"run_dir": str(run_dir), "tracks": str(tracks) if tracks else None,
               "truth": str(truth) if truth else None, "metrics_file": str(out),
               "options": {k: v for k, v in opts.items()}, "stamp": model_stamp(run_dir)}
    write_metrics(out, result)
    return result
