"""Interval scores of tracking data under a fitted chain (BirdFlowR's ``calc_interval_metrics``).

An interval is a bird seen in one cell in week t1 and another in week t2: the model forecasts
from the first cell, and the score is the log probability of the second (``log(p + 1e-8)``),
against the S&T-only null, with distances of the forecast and the win probability. Forecasts
run one transition at a time (:class:`birdflow.model.joints.Transitions`), so sparse models are
multiplied as sparse matrices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdflow.data.bfdata import distances_km
from birdflow.evaluation.metrics import to_cells
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.joints import Transitions

LL_FLOOR = 1e-8  # BirdFlowR calc_interval_metrics: log(p + 1e-8), so p = 0 scores -18.4
SCORE_COLUMNS = ("ll", "null_ll", "ll_gain", "pred_km", "st_km", "win_distance",
                 "win_distance_fraction", "win_prob", "energy_score_bf", "energy_score_st",
                 "energy_improvement", "weight")


def forecast_intervals(model: BirdFlowModel, intervals: pd.DataFrame) -> np.ndarray:
    """(n, n_cells) forecasts at week t2 from one-hots at (cell1, t1), batched by start week.

    Rows whose start cell is not in the model's week-t1 layout forecast all zeros.
    """
    P = Transitions(model.index, model.marginals)
    out = np.zeros((len(intervals), model.n_cells))
    t1s, lags = intervals["t1"].to_numpy(), intervals["lag"].to_numpy()
    cells = intervals["cell1"].to_numpy()
    for t1 in np.unique(t1s):
        rows = np.flatnonzero(t1s == t1)
        slot_of = np.full(model.n_cells + 1, -1)
        sc = model.index.slot_cell[t1]
        slot_of[sc[sc >= 0]] = np.flatnonzero(sc >= 0)
        d = np.zeros((len(rows), model.index.n_max))
        start = slot_of[cells[rows]]
        d[np.flatnonzero(start >= 0), start[start >= 0]] = 1.0
        for step in range(1, int(lags[rows].max()) + 1):
            d = P.step((t1 + step - 1) % model.n_transitions, d)
            done = lags[rows] == step
            if done.any():
                out[rows[done]] = to_cells(model, t1 + step, d[done])
    return out


def _win_prob(p: np.ndarray, s: np.ndarray, g: np.ndarray) -> float:
    """P(D_pred < D_st), D_pred ~ p and D_st ~ s independent, distances g (per cell)."""
    order = np.argsort(g, kind="stable")
    cum_s = np.concatenate([[0.0], np.cumsum(s[order])])
    s_le = cum_s[np.searchsorted(g[order], g, side="right")]  # mass of s at distance <= g_a
    return float(p @ (cum_s[-1] - s_le))


def score_intervals(model: BirdFlowModel, intervals: pd.DataFrame, *,
                    win_prob: bool = True) -> pd.DataFrame:
    """Score the intervals with an empty ``exclude`` (section 3.4 fields, distances in km).

    Every such interval is scored as BirdFlowR's ``calc_interval_metrics`` does, including
    those whose end cell gets exactly zero forecast probability (flagged in the
    ``zero_probability`` column): ll = log(p(end) + 1e-8), null_ll = log(s_t2(end) + 1e-8),
    so every model is ranked on the same intervals. Adds the columns in
    :data:`SCORE_COLUMNS` (NaN when excluded): win_distance = E_s[g] - E_p[g] with g the km
    to the end cell, energy scores E[g] - E[d(X, X')]/2 and weight = s_t1(start) / 52.
    """
    out = intervals.copy()
    for col in SCORE_COLUMNS:
        out[col] = np.nan
    out["zero_probability"] = False
    keep = np.flatnonzero(out["exclude"].to_numpy() == "")
    if keep.size == 0:
        return out
    sub = out.iloc[keep]
    p = forecast_intervals(model, sub)
    end, start = sub["cell2"].to_numpy(), sub["cell1"].to_numpy()
    p_end = p[np.arange(len(sub)), end]
    out.loc[out.index[keep], "zero_probability"] = p_end <= 0
    distr = np.asarray(model.data["distr"].values, dtype=np.float64)
    s = distr[sub["t2"].to_numpy()]
    ucells, inverse = np.unique(end, return_inverse=True)
    g = distances_km(model.data, ucells).T[inverse]  # (interval, cell): km to each end cell
    # the energy scores need all pairs: skipped (NaN) where the file holds no distance matrix
    D = distances_km(model.data) if "distance_km" in model.data else None
    pred, st = (p * g).sum(1), (s * g).sum(1)
    scores = {
        "ll": np.log(p_end + LL_FLOOR),
        "null_ll": np.log(s[np.arange(len(end)), end] + LL_FLOOR),
        "pred_km": pred,
        "st_km": st,
        "win_distance": st - pred,
        "win_distance_fraction": np.divide(st - pred, st, out=np.full(len(st), np.nan),
                                           where=st > 0),
        "energy_score_bf": pred - 0.5 * ((p @ D) * p).sum(1) if D is not None else np.nan * pred,
        "energy_score_st": st - 0.5 * ((s @ D) * s).sum(1) if D is not None else np.nan * st,
        "weight": distr[sub["t1"].to_numpy(), start] / 52.0,
    }
    scores["ll_gain"] = scores["ll"] - scores["null_ll"]
    scores["energy_improvement"] = scores["energy_score_st"] - scores["energy_score_bf"]
    if win_prob:
        scores["win_prob"] = np.array([_win_prob(p[k], s[k], g[k]) for k in range(len(end))])
    for col, values in scores.items():
        out.loc[out.index[keep], col] = values
    return out


def interval_summary(scored: pd.DataFrame) -> dict:
    """Means (``mean_*``) and start-weighted means (``weighted_*``) over scored intervals."""
    ok = scored[scored["exclude"] == ""]
    w = ok["weight"].to_numpy()
    w = w / w.sum() if len(ok) and w.sum() > 0 else w

    def mean(col):
        return float(ok[col].mean()) if len(ok) else None

    def wmean(col):
        return float(np.nansum(w * ok[col].to_numpy())) if len(ok) else None

    out = {"n_intervals": int(len(ok)),
           "n_zero_probability": int(ok["zero_probability"].sum()) if "zero_probability" in ok
           else 0}
    for col in ("ll", "null_ll", "ll_gain", "win_distance", "win_distance_fraction", "win_prob",
                "energy_score_bf", "energy_score_st", "energy_improvement", "elapsed_days",
                "elapsed_km"):
        out[f"mean_{col}"] = mean(col)
    for col in ("ll", "null_ll", "ll_gain", "win_distance", "win_distance_fraction", "win_prob"):
        out[f"weighted_mean_{col}"] = wmean(col)
    out["weighted_energy_improvement"] = wmean("energy_improvement")
    return out
