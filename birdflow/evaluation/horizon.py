"""How far ahead is the model useful: interval skill in bins of elapsed days and km.

The gain over the S&T-only null (``ll - null_ll``, nats per interval) and the distance gain
(``win_distance``: how many km closer to the observed cell the forecast's mean distance is than
the S&T map's) of each scored interval (:func:`birdflow.evaluation.calibration.score`) are
averaged in bins of the days and of the great-circle km between the two fixes, each with its
standard error. ``useful_days`` is the upper edge of the last of the leading day bins whose
gain is above 0 by more than 1.96 standard errors: up to that horizon the transitions say more
than the maps alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY_EDGES = (0, 7, 14, 21, 28, 42, 56, 91, 182, 365, np.inf)
KM_EDGES = (0, 50, 100, 200, 400, 800, 1600, 3200, np.inf)
MIN_N = 10  # intervals a bin needs to count towards useful_days


def _label(lo: float, hi: float) -> str:
    return f"{lo:g}+" if np.isinf(hi) else f"{lo:g}-{hi:g}"


def binned(scored: pd.DataFrame, by: str, edges) -> list[dict]:
    """Per bin of ``scored[by]``: label, lo, hi, n, mean and standard error of ll_gain and
    win_distance (None where the bin is empty)."""
    x = scored[by].to_numpy(dtype=float)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = scored[(x >= lo) & (x < hi)]
        row = {"bin": _label(lo, hi), "lo": float(lo), "hi": None if np.isinf(hi) else float(hi),
               "n": int(len(sel))}
        for col, name in (("ll_gain", "gain"), ("win_distance", "win_distance")):
            v = sel[col].to_numpy(dtype=float)
            v = v[~np.isnan(v)]
            row[name] = float(v.mean()) if v.size else None
            row[f"{name}_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
        out.append(row)
    return out


def useful_days(day_bins: list[dict]) -> tuple[float | None, bool]:
    """Upper edge (days) of the leading run of bins whose gain is significantly > 0 (module
    doc), and whether the data end there (no longer bin failed: the horizon may be longer).
    Bins with fewer than :data:`MIN_N` intervals are passed over; None when the first such
    bin already fails."""
    last = None
    for b in day_bins:
        if b["n"] < MIN_N or b["gain"] is None or b["gain_se"] is None:
            continue
        if b["gain"] - 1.96 * b["gain_se"] <= 0:
            return last, False
        last = b["hi"] if b["hi"] is not None else float("inf")
    return last, True


def horizon(scored: pd.DataFrame) -> dict:
    """{"days": bins, "km": bins, "useful_days", "useful_days_open" (the data end before the
    gain does), "mean_gain", "mean_win_distance", "n"}."""
    days = binned(scored, "elapsed_days", DAY_EDGES)
    useful, open_ended = useful_days(days)
    return {"n": int(len(scored)), "days": days, "km": binned(scored, "elapsed_km", KM_EDGES),
            "useful_days": useful, "useful_days_open": open_ended,
            "mean_gain": float(scored["ll_gain"].mean()) if len(scored) else None,
            "mean_win_distance": float(scored["win_distance"].mean()) if len(scored) else None}
