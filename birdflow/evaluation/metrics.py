"""Metrics of a fitted chain: fit to S&T, BirdFlowR's distribution performance, interval scores.

All functions take a :class:`birdflow.model.fitted.BirdFlowModel` (numpy) and work in its
slot layout one transition at a time (:class:`birdflow.model.joints.Transitions`), so a
neighbourhood-sparse model is only ever multiplied as a sparse matrix, never densified.
Week indices are 0-based positions in ``model.data.week``; correlations are Pearson over the
dynamic-mask cells of the week concerned, as in BirdFlowR's ``distribution_performance``.
"""

from __future__ import annotations

import numpy as np

from birdflow.errors import ConfigError
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.joints import Transitions

W2_BLUR_CELLS = 0.1  # entropic blur sqrt(eps) of the W2 metric, in grid cells
W2_UNIT_M = 1e6  # cell centres are scaled to 1000 km so costs are O(1)
W2_THRESHOLD = 1e-3  # L1 marginal error below which a week's W2 counts as exact (converged)
W2_MAX_ITERATIONS = 20000


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
        ``w2``: ``w2`` (km, see :func:`sinkhorn_w2_km`), ``w2_converged`` (bool: every solve of
        the week reached the threshold, so its W2 is exact at this blur), ``w2_error`` (the
        largest L1 marginal error its solves ended at: how far an unconverged week is) and the
        scalar ``w2_epsilon`` used.
    """
    mu = model.distrs()
    s = np.asarray(model.data["distr"].values, dtype=np.float64)
    out = {"l2": ((mu - s) ** 2).sum(axis=1), "tv": 0.5 * np.abs(mu - s).sum(axis=1)}
    if w2:
        if epsilon is None:
            epsilon = w2_epsilon(float(model.data.attrs.get("res_km", 100.0)))
        out["w2_epsilon"] = float(epsilon)
        d = model.data
        grid = grid_w2_km(mu, s, d["cell_row"].values, d["cell_col"].values,
                          d["cell_x"].values, d["cell_y"].values, epsilon)
        if grid is None:  # cells off a regular lattice: the point-cloud solve, O(n^2)
            xy = np.stack([d["cell_x"].values, d["cell_y"].values], axis=1)
            grid = sinkhorn_w2_km(mu, s, xy / W2_UNIT_M, epsilon)
        out["w2"], out["w2_converged"], out["w2_error"] = grid
    return out


W2_SUMMARY = ("mean_w2", "max_w2", "n_w2_unconverged", "max_w2_error", "w2_epsilon")


def w2_summary(fit: dict) -> dict:
    """The W2 fit's scalars: ``mean_w2``/``max_w2`` over the converged weeks only (the exact
    ones; None if none converged), how many weeks did not converge and the largest L1
    marginal error any week ended at, and the blur used."""
    ok = np.asarray(fit["w2_converged"], bool)
    w2 = np.asarray(fit["w2"], np.float64)[ok]
    return {"mean_w2": float(w2.mean()) if ok.any() else None,
            "max_w2": float(w2.max()) if ok.any() else None,
            "n_w2_unconverged": int((~ok).sum()),
            "max_w2_error": float(np.max(fit["w2_error"])), "w2_epsilon": fit["w2_epsilon"]}


def _week_supports(mu: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each week's cells with mass on either side, padded to one width.

    Returns (cells (W, width) int64, -1 = padding; mu and s on those cells, 0 at padding).
    """
    mu, s = np.asarray(mu, np.float64), np.asarray(s, np.float64)
    support = (mu > 0) | (s > 0)
    cells = np.full((len(mu), max(int(support.sum(axis=1).max()), 1)), -1, np.int64)
    for t, row in enumerate(support):
        idx = np.flatnonzero(row)
        cells[t, : idx.size] = idx
    a, b = (np.where(cells >= 0, np.take_along_axis(p, np.maximum(cells, 0), axis=1), 0.0)
            for p in (mu, s))
    return cells, a, b


def grid_w2_km(mu: np.ndarray, s: np.ndarray, cell_row, cell_col, x_m, y_m,
               epsilon: float) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`sinkhorn_w2_km` with the kernel applied one grid axis at a time.

    The same debiased entropic W2 (squared Euclidean cost in (1000 km)^2, the same blur and
    threshold), solved on each week's box of raster cells with
    :mod:`birdflow.losses.grid_kernel` (O(B (H + W)) per iteration instead of O(n^2)); box
    cells outside a week's support carry the loss's 1e-10 floor mass. None when the cells are
    not on a regular lattice.
    """
    import jax.numpy as jnp

    from birdflow.losses import grid_kernel, location

    cells, a, b = _week_supports(mu, s)
    cost = grid_kernel.layout(cell_row, cell_col, x_m, y_m, cells, W2_UNIT_M / 1e3, np.float32)
    if cost is None:
        return None
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    zeros = jnp.zeros((3 * len(mu), cost.size), jnp.float32)
    res = location.w2(a, b, cost, float(epsilon), (zeros, zeros), threshold=W2_THRESHOLD,
                      max_iterations=W2_MAX_ITERATIONS, grad_mode="danskin", debiased=True,
                      symmetric=True)
    div = np.asarray(res.values, np.float64)
    conv = np.asarray(res.converged).reshape(3, len(mu)).all(axis=0)
    err = np.asarray(res.errors, np.float64).reshape(3, len(mu)).max(axis=0)
    return np.sqrt(np.maximum(div, 0.0)) * 1000.0, conv, err


def sinkhorn_w2_km(mu: np.ndarray, s: np.ndarray, points: np.ndarray, epsilon: float = w2_epsilon(100.0)
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Debiased entropic W2 in km between rows of mu and s (n_weeks, n_cells).

    Each week uses only its own cells (mass > 0 on either side), padded with zero-weight
    points to a common size so one compiled solve (``lax.map``, O(n^2) memory) serves all
    weeks. Cost: squared Euclidean between ``points`` (n_cells, 2) in 1000 km; the value is
    1000 * sqrt(max(S_eps, 0)) with S_eps OTT's debiased Sinkhorn divergence. The blur
    ``epsilon`` (1000 km)^2 biases small partial displacements down (a pure translation reads
    exactly at any blur): moving 5 % of a blob by one 100 km cell (exact W2 22.4 km) gives
    9.5 km at eps = 0.01, 19.5 km at 1e-3, 22.1 km at 1e-4 (the default for 100 km cells,
    :func:`w2_epsilon`; about 200 cold iterations there). Returns (W2 km, converged, L1
    marginal error) per week; the error is the largest over the three solves, both marginals.
    """
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.tools.sinkhorn_divergence import sinkhorn_divergence

    cells, a, b = _week_supports(mu, s)
    xy = np.asarray(points, np.float64)[np.maximum(cells, 0)]  # padding: zero-weight copies

    def one(args):
        pts, wa, wb = args
        div, out = sinkhorn_divergence(pointcloud.PointCloud, pts, pts, a=wa, b=wb,
                                       epsilon=epsilon,
                                       solve_kwargs={"max_iterations": W2_MAX_ITERATIONS,
                                                     "threshold": W2_THRESHOLD})
        err = jnp.max(jnp.stack([
            jnp.abs(P.sum(1) - p).sum() + jnp.abs(P.sum(0) - q).sum() for P, p, q in (
                (geom.transport_from_potentials(*fg), p, q) for geom, fg, (p, q) in
                zip(out.geoms, out.potentials, ((wa, wb), (wa, wa), (wb, wb)), strict=True))]))
        return div, jnp.all(jnp.stack([jnp.asarray(c) for c in out.converged])), err

    args = tuple(jnp.asarray(v, jnp.float32) for v in (xy, a, b))
    div, conv, err = jax.jit(lambda x: jax.lax.map(one, x))(args)
    return (np.sqrt(np.maximum(np.asarray(div, np.float64), 0.0)) * 1000.0, np.asarray(conv),
            np.asarray(err, np.float64))


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
