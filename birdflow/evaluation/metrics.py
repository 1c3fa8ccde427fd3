"""Metrics of a fitted chain: fit to S&T, BirdFlowR's distribution performance, interval scores.

All functions take a :class:`birdflow.model.fitted.BirdFlowModel` (numpy) and work in its
slot layout one transition at a time (:class:`birdflow.model.joints.Transitions`), so a
neighbourhood-sparse model is only ever multiplied as a sparse matrix, never densified.
Week indices are 0-based positions in ``model.data.week``; correlations are Pearson over the
dynamic-mask cells of the week concerned, as in BirdFlowR's ``distribution_performance``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdflow.errors import ConfigError
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.joints import Transitions

W2_BLUR_CELLS = 0.1  # entropic blur sqrt(eps) of the W2 metric, in grid cells
W2_UNIT_M = 1e6  # cell centres are scaled to 1000 km so costs are O(1)


def w2_epsilon(res_km: float) -> float:
    """Default blur of the W2 metric, (1000 km)^2: a tenth of a cell, sqrt(eps) = res_km / 10.

    Small enough that moving part of the mass by one cell reads within 5 % of the exact W2
    (moving 5 % of a blob by one 100 km cell: exact 22.4 km, 22.1 km here; the former
    eps = 0.01 (1000 km)^2 read 9.5 km), tested in tests/test_evaluate.py.
    """
    return (W2_BLUR_CELLS * float(res_km) / 1000.0) ** 2


def slot_transitions(model: BirdFlowModel) -> np.ndarray:
    """(n_transitions, n_max, n_max) row-stochastic transitions; rows without mass are 0.

    Dense models only (all weeks at once); sparse ones step with :class:`Transitions`.

    Raises:
        ConfigError: the model is neighbourhood-sparse.
    """
    if model.sparse:
        raise ConfigError(f"slot_transitions: the model is neighbourhood-sparse "
                          f"({model.index.n_neighbours} per row); all weeks dense would need "
                          f"{model.n_transitions * model.index.n_max**2 * 8 / 1e9:.3g} GB - use "
                          "birdflow.model.joints.Transitions(model.index, model.marginals)")
    M = np.asarray(model.marginals, dtype=np.float64)
    rows = M.sum(axis=2, keepdims=True)
    return np.divide(M, rows, out=np.zeros_like(M), where=rows > 0)


def to_slots(model: BirdFlowModel, t: int, per_cell: np.ndarray) -> np.ndarray:
    """(..., n_cells) values -> (..., n_max) slots of week index t (0 in padding)."""
    sc = model.index.slot_cell[t % model.index.n_weeks]
    return np.where(sc >= 0, np.asarray(per_cell)[..., np.maximum(sc, 0)], 0.0)


def to_cells(model: BirdFlowModel, t: int, slots: np.ndarray) -> np.ndarray:
    """(..., n_max) slot values of week index t -> (..., n_cells), 0 off the week's cells."""
    sc = model.index.slot_cell[t % model.index.n_weeks]
    out = np.zeros((*np.shape(slots)[:-1], model.n_cells))
    out[..., sc[sc >= 0]] = np.asarray(slots)[..., sc >= 0]
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when fewer than two values or either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    den = np.sqrt((da**2).sum() * (db**2).sum())
    return float((da * db).sum() / den) if den > 0 else float("nan")


def weekly_distr_cor(model: BirdFlowModel, mu: np.ndarray | None = None) -> np.ndarray:
    """(n_weeks,) Pearson correlation of model and S&T distributions over each dynamic mask."""
    mu = model.distrs() if mu is None else mu
    s = np.asarray(model.data["distr"].values, dtype=np.float64)
    dyn = np.asarray(model.data["dynamic_mask"].values, dtype=bool)
    return np.array([pearson(mu[t][dyn[t]], s[t][dyn[t]]) for t in range(model.index.n_weeks)])


def week_sequence(model: BirdFlowModel, week_range: tuple[int, int] | None = None) -> list[int]:
    """Week indices start..end visited by BirdFlowR's timestep sequence.

    ``week_range`` holds S&T week numbers (first, last); it wraps across 52 -> 1 in cyclic
    models (first == last means a full year). Default: the whole model (1..52, 1 if cyclic).
    """
    n_weeks = model.index.n_weeks
    if week_range is None:
        start, n_steps = 0, model.n_transitions
    else:
        weeks = [int(w) for w in model.data["week"].values]
        missing = [w for w in week_range if int(w) not in weeks]
        if missing:
            raise ConfigError(f"week_range={tuple(week_range)}: week(s) {missing} are not in the "
                              f"model (weeks {weeks[0]}..{weeks[-1]}); pick weeks it covers")
        start, end = weeks.index(int(week_range[0])), weeks.index(int(week_range[1]))
        if model.cyclic:
            n_steps = (end - start) % n_weeks or n_weeks
        else:
            n_steps = end - start
        if n_steps <= 0:
            raise ConfigError(f"week_range={tuple(week_range)}: the model is not cyclic, so the "
                              "first week must come before the last; swap them")
    return [(start + k) % n_weeks for k in range(n_steps + 1)]


def fit_metrics(model: BirdFlowModel, *, w2: bool = True, epsilon: float | None = None) -> dict:
    """Per-week fit of model distributions mu_t to S&T distributions s_t.

    Args:
        epsilon: W2 blur in (1000 km)^2; None = :func:`w2_epsilon` of the grid's ``res_km``.

    Returns:
        dict of (n_weeks,) arrays: ``l2`` = sum (mu - s)^2, ``tv`` = 0.5 sum |mu - s|, and with
        ``w2``: ``w2`` (km, see :func:`sinkhorn_w2_km`), ``w2_converged`` (bool) and the
        scalar ``w2_epsilon`` used.
    """
    mu = model.distrs()
    s = np.asarray(model.data["distr"].values, dtype=np.float64)
    out = {"l2": ((mu - s) ** 2).sum(axis=1), "tv": 0.5 * np.abs(mu - s).sum(axis=1)}
    if w2:
        if epsilon is None:
            epsilon = w2_epsilon(float(model.data.attrs.get("res_km", 100.0)))
        out["w2_epsilon"] = float(epsilon)
        xy = np.stack([model.data["cell_x"].values, model.data["cell_y"].values], axis=1)
        out["w2"], out["w2_converged"] = sinkhorn_w2_km(mu, s, xy / W2_UNIT_M, epsilon)
    return out


def sinkhorn_w2_km(mu: np.ndarray, s: np.ndarray, points: np.ndarray,
                   epsilon: float = w2_epsilon(100.0)) -> tuple[np.ndarray, np.ndarray]:
    """Debiased entropic W2 in km between rows of mu and s (n_weeks, n_cells).

    Each week uses only its own cells (mass > 0 on either side), padded with zero-weight
    points to a common size so one compiled solve (``lax.map``, O(n^2) memory) serves all
    weeks. Cost: squared Euclidean between ``points`` (n_cells, 2) in 1000 km; the value is
    1000 * sqrt(max(S_eps, 0)) with S_eps OTT's debiased Sinkhorn divergence. The blur
    ``epsilon`` (1000 km)^2 biases small partial displacements down (a pure translation reads
    exactly at any blur): moving 5 % of a blob by one 100 km cell (exact W2 22.4 km) gives
    9.5 km at eps = 0.01, 19.5 km at 1e-3, 22.1 km at 1e-4 (the default for 100 km cells,
    :func:`w2_epsilon`; about 200 cold iterations there).
    """
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.tools.sinkhorn_divergence import sinkhorn_divergence

    mu, s = np.asarray(mu, np.float64), np.asarray(s, np.float64)
    support = (mu > 0) | (s > 0)
    width = max(int(support.sum(axis=1).max()), 1)
    cells = np.zeros((len(mu), width), dtype=np.int64)
    used = np.zeros((len(mu), width), dtype=bool)
    for t, row in enumerate(support):
        idx = np.flatnonzero(row)
        cells[t, : idx.size], used[t, : idx.size] = idx, True
    a = np.where(used, np.take_along_axis(mu, cells, axis=1), 0.0)
    b = np.where(used, np.take_along_axis(s, cells, axis=1), 0.0)
    xy = np.asarray(points, np.float64)[cells]

    def one(args):
        pts, wa, wb = args
        div, out = sinkhorn_divergence(pointcloud.PointCloud, pts, pts, a=wa, b=wb,
                                       epsilon=epsilon,
                                       solve_kwargs={"max_iterations": 20000, "threshold": 1e-3})
        return div, jnp.all(jnp.stack([jnp.asarray(c) for c in out.converged]))

    args = tuple(jnp.asarray(v, jnp.float32) for v in (xy, a, b))
    div, conv = jax.jit(lambda x: jax.lax.map(one, x))(args)
    return np.sqrt(np.maximum(np.asarray(div, np.float64), 0.0)) * 1000.0, np.asarray(conv)


def distribution_performance(model: BirdFlowModel,
                             week_range: tuple[int, int] | None = None) -> dict:
    """BirdFlowR's ``distribution_performance`` over a week sequence (reference section 3.1).

    Returns:
        dict with per-week (n_weeks,) arrays ``distr_cor`` (every week) and
        ``single_step_cor`` (NaN for weeks that start no transition of the sequence), and
        scalars over the sequence's "from" weeks: mean/min_distr_cor, mean/min_step_cor,
        st_traverse_cor, md_traverse_cor, n_states.
    """
    seq = week_sequence(model, week_range)
    P = Transitions(model.index, model.marginals)
    mu = model.distrs()
    s = np.asarray(model.data["distr"].values, dtype=np.float64)
    dyn = np.asarray(model.data["dynamic_mask"].values, dtype=bool)
    n_weeks = model.index.n_weeks
    distr_cor = weekly_distr_cor(model, mu)
    step_cor = np.full(n_weeks, np.nan)
    for t, t_next in zip(seq[:-1], seq[1:], strict=True):
        pred = to_cells(model, t_next, P.step(t, to_slots(model, t, s[t])))
        step_cor[t] = pearson(pred[dyn[t_next]], s[t_next][dyn[t_next]])

    def traverse(start_cells: np.ndarray) -> float:
        d = to_slots(model, seq[0], start_cells)
        for t in seq[:-1]:
            d = P.step(t, d)
        end = seq[-1]
        return pearson(to_cells(model, end, d)[dyn[end]], s[end][dyn[end]])

    frm = seq[:-1]
    return {
        "distr_cor": distr_cor,
        "single_step_cor": step_cor,
        "mean_distr_cor": float(np.mean(distr_cor[frm])),
        "min_distr_cor": float(np.min(distr_cor[frm])),
        "mean_step_cor": float(np.mean(step_cor[frm])),
        "min_step_cor": float(np.min(step_cor[frm])),
        "st_traverse_cor": traverse(s[seq[0]]),
        "md_traverse_cor": traverse(mu[seq[0]]),
        "n_states": int((mu[frm] > 0).sum()),
    }


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
    D = np.asarray(model.data["distance_km"].values, dtype=np.float64)
    s = distr[sub["t2"].to_numpy()]
    g = D[:, end].T
    pred, st = (p * g).sum(1), (s * g).sum(1)
    scores = {
        "ll": np.log(p_end + LL_FLOOR),
        "null_ll": np.log(s[np.arange(len(end)), end] + LL_FLOOR),
        "pred_km": pred,
        "st_km": st,
        "win_distance": st - pred,
        "win_distance_fraction": np.divide(st - pred, st, out=np.full(len(st), np.nan),
                                           where=st > 0),
        "energy_score_bf": pred - 0.5 * ((p @ D) * p).sum(1),
        "energy_score_st": st - 0.5 * ((s @ D) * s).sum(1),
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
