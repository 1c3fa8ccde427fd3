"""Calibration of interval forecasts: randomised PIT along the grid's rows and columns, and the
coverage of the forecast's highest-probability set.

For an interval a bird seen in cell ``c1`` in week t1 and in cell ``c2`` in week t2, the model
forecasts a distribution ``f`` over cells at t2 (:func:`forecasts`). Three numbers say where
the observed cell falls in it:

* **row PIT**: the forecast mass of the grid rows north of ``c2``'s row plus a uniform share
  ``U`` of the mass of its own row, ``F(row < r) + U · F(row = r)``; the **column PIT** the
  same for the columns west of ``c2``'s. For discrete forecasts this randomised probability
  integral transform is Uniform(0, 1) exactly when the observations are draws from the
  forecasts (Czado, Gneiting & Held 2009, Biometrics 65:1254), so its Kolmogorov–Smirnov
  distance to the uniform is below the 5 % critical value for its n about 95 % of the time.
* **HPD rank**: ``V = Σ_{f < f(c2)} f + U · Σ_{f = f(c2)} f``, the forecast mass less likely
  than the observed cell (ties and the cell itself shared at random). V is Uniform(0, 1) under
  calibration and the observation lies in the forecast's 95 % highest-probability set (its
  boundary cell included at random) exactly when V > 0.05, so a calibrated model covers 95 %.
  ``Σ_{f ≤ f(c2)} f`` (no randomisation) is the histogram the report draws: mass piled at 0
  means observations in cells the model thought unlikely, at 1 observations only in its modes.
* **set coverage**: the share of observations in the deterministic smallest set holding ≥ 95 %
  of the forecast, against the mean mass of those sets (what a calibrated model covers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from birdflow.evaluation.intervals import LL_FLOOR, forecast_intervals
from birdflow.model.fitted import BirdFlowModel

LEVEL = 0.95  # the highest-probability set's nominal mass
CHUNK = 2048  # intervals forecast at a time: (CHUNK, n_cells) float64 in memory
N_HIST_BINS = 10


def cell_rows_cols(ds) -> tuple[np.ndarray, np.ndarray]:
    """Grid row (0 = north) and column (0 = west) of each active cell, in cell order.

    Cells are the static mask's TRUE pixels row-major from the north-west corner, so the
    row-major ``np.nonzero`` of the mask lists them in order (``y`` decreases down the rows).
    """
    rows, cols = np.nonzero(np.asarray(ds["static_mask"].values, dtype=bool))
    if ds["y"].values[0] < ds["y"].values[-1]:  # a south-up grid: count rows from the north
        rows = ds.sizes["y"] - 1 - rows
    return rows.astype(np.int64), cols.astype(np.int64)


def forecasts(model: BirdFlowModel, intervals: pd.DataFrame, chunk: int = CHUNK):
    """Yield (positions, (k, n_cells) forecasts) for the intervals, ``chunk`` at a time."""
    for lo in range(0, len(intervals), chunk):
        sub = intervals.iloc[lo:lo + chunk]
        yield np.arange(lo, lo + len(sub)), forecast_intervals(model, sub)


def pit(forecast: np.ndarray, end_cell: np.ndarray, group: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Randomised PIT of the observed cells along one grid axis.

    Args:
        forecast: (k, n_cells) forecast distributions (rows summing to 1, or 0 for none).
        end_cell: (k,) observed cell of each.
        group: (n_cells,) the grid row (or column) of each cell, increasing north to south
            (or west to east).
        u: (k,) uniforms in [0, 1).

    Returns:
        (k,) ``F(group < g_obs) + u · F(group = g_obs)``, with F normalised to sum 1.
    """
    indicator = np.zeros((len(group), int(group.max()) + 1))
    indicator[np.arange(len(group)), group] = 1.0
    by_group = forecast @ indicator  # (k, n_groups): forecast mass per row (or column)
    total = np.maximum(by_group.sum(axis=1), 1e-300)
    g = group[end_cell]
    below = np.cumsum(by_group, axis=1)[np.arange(len(g)), g] - by_group[np.arange(len(g)), g]
    return (below + u * by_group[np.arange(len(g)), g]) / total


def hpd_rank(forecast: np.ndarray, end_cell: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Randomised and plain mass of cells no more likely than the observed one.

    Returns:
        (V, W): ``V = Σ_{f < f_obs} f + u · Σ_{f = f_obs} f`` and ``W = Σ_{f ≤ f_obs} f``,
        each (k,) with the forecast normalised to sum 1.
    """
    total = np.maximum(forecast.sum(axis=1, keepdims=True), 1e-300)
    f = forecast / total
    f_obs = f[np.arange(len(end_cell)), end_cell][:, None]
    less = np.where(f < f_obs, f, 0.0).sum(axis=1)
    equal = np.where(f == f_obs, f, 0.0).sum(axis=1)
    return less + u * equal, less + equal


def hpd_set(forecast: np.ndarray, end_cell: np.ndarray, level: float = LEVEL):
    """Whether each observed cell is in the smallest set of most likely cells holding >= level,
    and each set's mass: ((k,) bool, (k,) float)."""
    f = forecast / np.maximum(forecast.sum(axis=1, keepdims=True), 1e-300)
    order = np.argsort(-f, axis=1, kind="stable")
    sorted_f = np.take_along_axis(f, order, axis=1)
    cum = np.cumsum(sorted_f, axis=1)
    size = np.minimum((cum < level - 1e-12).sum(axis=1) + 1, f.shape[1])  # cells in the set
    mass = cum[np.arange(len(f)), size - 1]
    rank = np.argsort(order, axis=1)[np.arange(len(end_cell)), end_cell]
    return rank < size, mass


def score(model: BirdFlowModel, intervals: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Calibration and skill of each scorable interval (``exclude == ''``).

    Adds to those rows: ``pit_row``, ``pit_col``, ``hpd_v`` (randomised), ``hpd_w`` (plain),
    ``in_set`` and ``set_mass`` (the 95 % set), and ``ll``, ``null_ll``, ``ll_gain``,
    ``win_distance`` computed as :func:`birdflow.evaluation.intervals.score_intervals` does
    (``log(p + 1e-8)``; km of the S&T null's mean distance to the observed cell minus the
    forecast's), from the same forecasts, a chunk at a time.
    """
    from birdflow.data.bfdata import distances_km

    ok = intervals[intervals["exclude"] == ""].reset_index(drop=True)
    rows, cols = cell_rows_cols(model.data)
    rng = np.random.default_rng(seed)
    u = rng.random((3, len(ok)))
    distr = np.asarray(model.data["distr"].values, dtype=np.float64)
    out = {k: np.full(len(ok), np.nan) for k in ("pit_row", "pit_col", "hpd_v", "hpd_w",
                                                 "set_mass", "ll", "null_ll", "win_distance")}
    out["in_set"] = np.zeros(len(ok), dtype=bool)
    end_all = ok["cell2"].to_numpy()
    for pos, p in forecasts(model, ok):
        end = end_all[pos]
        has = p.sum(axis=1) > 0
        out["pit_row"][pos] = np.where(has, pit(p, end, rows, u[0, pos]), np.nan)
        out["pit_col"][pos] = np.where(has, pit(p, end, cols, u[1, pos]), np.nan)
        v, w = hpd_rank(p, end, u[2, pos])
        out["hpd_v"][pos], out["hpd_w"][pos] = np.where(has, v, np.nan), np.where(has, w, np.nan)
        inside, mass = hpd_set(p, end)
        out["in_set"][pos], out["set_mass"][pos] = inside & has, np.where(has, mass, np.nan)
        s = distr[ok["t2"].to_numpy()[pos]]
        out["ll"][pos] = np.log(p[np.arange(len(end)), end] + LL_FLOOR)
        out["null_ll"][pos] = np.log(s[np.arange(len(end)), end] + LL_FLOOR)
        g = distances_km(model.data, end).T  # (k, n_cells): km from each cell to the end cell
        out["win_distance"][pos] = (s * g).sum(1) - (p * g).sum(1)
    out["ll_gain"] = out["ll"] - out["null_ll"]
    return ok.assign(**out)


def ks_critical(n: int, alpha: float = 0.05) -> float:
    """The (1 - alpha) quantile of the one-sample KS distance for n observations (exact)."""
    return float(stats.kstwo.ppf(1 - alpha, n)) if n > 0 else float("nan")


def binomial_interval(n: int, p: float = LEVEL, alpha: float = 0.05) -> tuple[float, float]:
    """The central (1 - alpha) range of the share of n Bernoulli(p) successes."""
    if n <= 0:
        return float("nan"), float("nan")
    lo, hi = stats.binom.ppf([alpha / 2, 1 - alpha / 2], n, p)
    return float(lo / n), float(hi / n)


def summarise(scored: pd.DataFrame) -> dict:
    """Calibration figures of scored intervals (rows with a forecast), with their n.

    Returns:
        n, ks_row / ks_col / ks_hpd (KS distance to Uniform(0, 1) of the row and column PITs and
        of V), ks_critical (its 5 % critical value for n), calibrated_rows / _cols (KS below
        it), coverage (share with V > 0.05: the randomised 95 % set) and its binomial 95 %
        range for n, coverage_ok, set_coverage and set_mass (the deterministic set), and
        hist_hpd_w (counts of Σ_{f ≤ f(obs)} f in 10 bins over [0, 1]).
    """
    s = scored[scored["pit_row"].notna()]
    n = len(s)
    crit = ks_critical(n)

    def ks(col):
        return float(stats.kstest(s[col].to_numpy(), "uniform").statistic) if n else None

    cov = float((s["hpd_v"] > 1 - LEVEL).mean()) if n else None
    lo, hi = binomial_interval(n)
    out = {"n": n, "ks_row": ks("pit_row"), "ks_col": ks("pit_col"), "ks_hpd": ks("hpd_v"),
           "ks_critical": crit if n else None, "coverage": cov,
           "coverage_range": [lo, hi] if n else None,
           "set_coverage": float(s["in_set"].mean()) if n else None,
           "set_mass": float(s["set_mass"].mean()) if n else None,
           "hist_hpd_w": np.histogram(s["hpd_w"], bins=N_HIST_BINS, range=(0, 1))[0].tolist()}
    out["calibrated_rows"] = bool(n and out["ks_row"] < crit)
    out["calibrated_cols"] = bool(n and out["ks_col"] < crit)
    out["coverage_ok"] = bool(n and lo <= cov <= hi)
    return out
