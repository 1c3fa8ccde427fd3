"""Migratory connectivity (MC, Cohen et al. 2018, Methods Ecol. Evol. 9:513) of tracks and model.

MC is the correlation, over pairs of individuals drawn from the population, between the
distance of their origins ``D`` and the distance of their targets ``V`` (Cohen et al. 2018,
eq. 3): with origin weights π and transition probabilities ψ (origin -> target),

    MC = Σ π_i π_l ψ_ik ψ_lm (D_il − D̄)(V_km − V̄) / (σ_D σ_V),

D̄, σ_D, V̄, σ_V the weighted means and standard deviations of D and V over the same pairs.
With one observed target per bird (ψ one-hot) and distinct birds it is the Mantel correlation
of the two distance matrices. Three figures per migration:

* **observed**: the tracks' origin/target pairs (one per bird: the last fix of the origin
  season before the first fix of the target season; breeding -> nonbreeding for the
  postbreeding migration, nonbreeding -> breeding for the prebreeding one), Mantel
  correlation over distinct birds, with a bootstrap over birds;
* **model, same origins**: the formula with π uniform over the same birds (distinct pairs) and
  ψ_i the model's forecast from bird i's origin cell and week to its target week — the MC of
  model routes started where and when the birds were, in expectation; with the spread of
  the MC of one sampled route per bird;
* **range-wide**: the formula over every cell of the model's distribution at the migration's
  first week, ψ its forecast to the last week (pairs from one cell included, as Cohen's).

Distances are great-circle km between cell centres, so tracks and model are on one grid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdflow.data.grid import great_circle_km
from birdflow.data.seasons import season_span
from birdflow.data.weeks import N_WEEKS
from birdflow.errors import BirdFlowError
from birdflow.evaluation.intervals import forecast_intervals
from birdflow.model.fitted import BirdFlowModel

MIGRATIONS = {"prebreeding": ("nonbreeding", "breeding"),
              "postbreeding": ("breeding", "nonbreeding")}
N_BOOT = 1000
N_ROUTE_DRAWS = 200
MAX_CELLS = 2000  # range-wide MC: origin cells kept (the most abundant), the rest dropped
MAX_TARGETS = 4000  # target cells kept (those the forecasts give most mass): V is (n, n) km


def mc_from_moments(W: np.ndarray, D: np.ndarray, EV: np.ndarray, EV2: np.ndarray) -> float:
    """Cohen's MC from pair weights W (sum normalised here), origin distances D and the first
    and second moments of the target distance of each pair (EV, EV2), all (n, n)."""
    W = W / W.sum()
    d_mean = (W * D).sum()
    sd_d = np.sqrt((W * (D - d_mean) ** 2).sum())
    v_mean = (W * EV).sum()
    sd_v = np.sqrt(max((W * EV2).sum() - v_mean**2, 0.0))
    if sd_d <= 0 or sd_v <= 0:
        return float("nan")
    return float((W * (D - d_mean) * EV).sum() / (sd_d * sd_v))


def bootstrap_mantel(counts: np.ndarray, D: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Mantel correlation of each bootstrap resample over distinct birds, all at once.

    ``counts`` (B, n) says how often each bird was drawn; a pair of draws (i, l), i != l,
    weighs ``c_i c_l``, draws of the same bird are not a pair. D and V (n, n) have zero
    diagonals, so only the total weight needs the diagonal taken out.
    """
    def pair_sum(A):
        return np.einsum("bi,bi->b", counts @ A, counts)

    w = counts.sum(axis=1) ** 2 - (counts**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one bird: NaN
        md, mv = pair_sum(D) / w, pair_sum(V) / w
        var_d, var_v = pair_sum(D**2) / w - md**2, pair_sum(V**2) / w - mv**2
        r = (pair_sum(D * V) / w - md * mv) / np.sqrt(var_d * var_v)
    return np.where(np.isfinite(r) & (var_d > 0) & (var_v > 0), r, np.nan)


def cohen_mc(pi: np.ndarray, psi: np.ndarray, D: np.ndarray, V: np.ndarray, *,
             distinct: bool = False) -> float:
    """MC of origins with weights ``pi`` (n,), transitions ``psi`` (n, m) to targets with
    distances ``V`` (m, m), origin distances ``D`` (n, n). ``distinct`` leaves out the pairs
    (i, i): origins are individual birds, not sites."""
    W = np.outer(pi, pi)
    if distinct:
        np.fill_diagonal(W, 0.0)
    return mc_from_moments(W, D, psi @ V @ psi.T, psi @ (V**2) @ psi.T)


def _distances(ds, cells_a: np.ndarray, cells_b: np.ndarray) -> np.ndarray:
    lon, lat = ds["cell_lon"].values, ds["cell_lat"].values
    return great_circle_km(lon[cells_a][:, None], lat[cells_a][:, None],
                           lon[cells_b][None, :], lat[cells_b][None, :])


def target_support(psi: np.ndarray, max_cells: int = MAX_TARGETS):
    """The target cells the forecasts ``psi`` (k, n_cells) reach, at most ``max_cells`` of them
    (those with the most summed mass), in cell order; the forecasts on them renormalised; the
    share of the forecasts' mass they hold (1 unless cells were dropped)."""
    mass = psi.sum(axis=0)
    support = np.flatnonzero(mass > 0)
    if support.size > max_cells:
        support = np.sort(support[np.argsort(-mass[support], kind="stable")[:max_cells]])
    sub = psi[:, support]
    kept = float(sub.sum() / max(psi.sum(), 1e-300))
    return support, sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-300), kept


def _in_span(week: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    w0, w1 = span
    return (np.asarray(week) - w0) % N_WEEKS <= (w1 - w0) % N_WEEKS


def migration_pairs(rows: pd.DataFrame, ds, migration: str) -> pd.DataFrame:
    """One origin/target pair per bird for ``migration`` (module doc), from snapped rows.

    Returns:
        bird_id, source, cell1, t1, week1, date1, cell2, t2, week2, date2 of each pair.
    """
    origin, target = (season_span(ds, s, buffer=0) for s in MIGRATIONS[migration])
    ok = rows[(rows["problem"] == "") & (rows["cell"] >= 0) & (rows["t"] >= 0)]
    ok = ok.sort_values(["bird_id", "date", "line"], kind="stable")
    in_o, in_t = _in_span(ok["week"].to_numpy(), origin), _in_span(ok["week"].to_numpy(), target)
    bird = ok["bird_id"].to_numpy()
    out, last_origin, done = [], None, set()
    for k in range(len(ok)):
        if k and bird[k] != bird[k - 1]:
            last_origin = None
        if bird[k] in done:
            continue
        if in_o[k]:
            last_origin = k
        elif in_t[k] and last_origin is not None:
            out.append((last_origin, k))
            done.add(bird[k])
    cols = ["cell", "t", "week", "date"]
    a = ok.iloc[[i for i, _ in out]].reset_index(drop=True)
    b = ok.iloc[[j for _, j in out]].reset_index(drop=True)
    pairs = pd.DataFrame({"bird_id": a["bird_id"],
                          "source": [x if x == y else "+".join(sorted((x, y)))
                                     for x, y in zip(a["source"], b["source"], strict=True)]
                          if "source" in a else ""})
    for c in cols:
        pairs[f"{c}1"], pairs[f"{c}2"] = a[c].to_numpy(), b[c].to_numpy()
    return pairs


def pair_forecasts(model: BirdFlowModel, pairs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The pairs the model can forecast and their (n, n_cells) forecasts at the target week."""
    n = model.index.n_weeks
    t1, t2 = pairs["t1"].to_numpy(), pairs["t2"].to_numpy()
    lag = (t2 - t1) % n if model.cyclic else t2 - t1
    lag = np.where(model.cyclic & (lag == 0), n, lag)
    keep = pairs.assign(lag=lag)[lag > 0].reset_index(drop=True)
    if keep.empty:
        return keep, np.zeros((0, model.n_cells))
    psi = forecast_intervals(model, keep)
    has = psi.sum(axis=1) > 0
    return keep[has].reset_index(drop=True), psi[has] / psi[has].sum(axis=1, keepdims=True)


def _interval(values) -> list[float] | None:
    """The 2.5 and 97.5 % quantiles of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return np.quantile(v, [0.025, 0.975]).tolist() if v.size else None


def observed_and_model_mc(model: BirdFlowModel, pairs: pd.DataFrame, psi: np.ndarray,
                          seed: int = 0, n_boot: int = N_BOOT,
                          n_draws: int = N_ROUTE_DRAWS) -> dict:
    """Observed MC with its bootstrap over birds, and the model's MC from the same origins.

    Returns:
        n_birds, observed, observed_ci (2.5 and 97.5 % bootstrap quantiles), model (exact,
        Cohen's formula with the forecasts), model_routes_ci (2.5 and 97.5 % of the MC of one
        sampled route per bird), model_in_ci (model inside the observed interval) and
        target_mass (:func:`target_support`).
    """
    n = len(pairs)
    out = {"n_birds": n, "observed": None, "observed_ci": None, "model": None,
           "model_routes_ci": None, "model_in_ci": None}
    if n < 3:
        return out
    ds, rng = model.data, np.random.default_rng(seed)
    c1, c2 = pairs["cell1"].to_numpy(), pairs["cell2"].to_numpy()
    D = _distances(ds, c1, c1)
    V_obs = _distances(ds, c2, c2)
    W = 1.0 - np.eye(n)
    out["observed"] = mc_from_moments(W, D, V_obs, V_obs**2)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # (B, n)
    boot = bootstrap_mantel(counts, D, V_obs)
    out["observed_ci"] = _interval(boot)
    support, sub, out["target_mass"] = target_support(psi)
    V = _distances(ds, support, support)
    out["model"] = cohen_mc(np.full(n, 1.0 / n), sub, D, V, distinct=True)
    cum = np.cumsum(sub, axis=1)
    draws = []
    for _ in range(n_draws):
        pick = (cum < rng.random((n, 1)) * cum[:, -1:]).sum(axis=1)
        cells = support[np.minimum(pick, len(support) - 1)]
        Vd = V[np.ix_(np.searchsorted(support, cells), np.searchsorted(support, cells))]
        draws.append(mc_from_moments(W, D, Vd, Vd**2))
    out["model_routes_ci"] = _interval(draws)
    if out["observed_ci"] is not None and np.isfinite(out["model"]):
        lo, hi = out["observed_ci"]
        out["model_in_ci"] = bool(lo <= out["model"] <= hi)
    return out


def range_wide_mc(model: BirdFlowModel, migration: str, max_cells: int = MAX_CELLS) -> dict:
    """Cohen's MC over the model's whole distribution across the migration (module doc).

    Returns {"mc", "weeks": [first, last] S&T weeks, "n_origin_cells", "origin_mass",
    "target_mass"} (the mass of the origin cells kept when there are more than ``max_cells``,
    and of the target cells kept by :func:`target_support`).
    """
    w0, w1 = season_span(model.data, migration, buffer=1)
    tl = model.timeline(w0, w1)
    pi = model.distr_at(int(tl.positions[0]))
    cells = np.flatnonzero(pi > 0)
    if cells.size > max_cells:
        cells = cells[np.argsort(-pi[cells], kind="stable")[:max_cells]]
    mass = float(pi[cells].sum() / pi.sum())
    start = np.zeros((cells.size, model.n_cells))
    start[np.arange(cells.size), cells] = 1.0
    psi = model.propagate(start, tl)[-1]
    keep = psi.sum(axis=1) > 0
    cells, psi = cells[keep], psi[keep] / psi[keep].sum(axis=1, keepdims=True)
    support, sub, target_mass = target_support(psi)
    mc = cohen_mc(pi[cells] / pi[cells].sum(), sub,
                  _distances(model.data, cells, cells), _distances(model.data, support, support))
    return {"mc": mc, "weeks": [int(w0), int(w1)], "n_origin_cells": int(cells.size),
            "origin_mass": mass, "target_mass": target_mass}


def connectivity(model: BirdFlowModel, rows: pd.DataFrame, migrations=tuple(MIGRATIONS),
                 by_source: bool = True, seed: int = 0) -> tuple[dict, list[str]]:
    """MC per migration: observed and model per source (and ``all``), and range-wide.

    Returns:
        ({migration: {"range_wide": {...}, "by_source": {source: {...}}}}, notes).
    """
    out, notes = {}, []
    for mig in migrations:
        try:
            pairs = migration_pairs(rows, model.data, mig)
            entry = {"range_wide": range_wide_mc(model, mig), "by_source": {}}
        except BirdFlowError as e:
            notes.append(f"{mig} connectivity skipped: {e}")
            continue
        pairs, psi = pair_forecasts(model, pairs)
        groups = {"all": np.ones(len(pairs), bool)}
        if by_source and "source" in pairs and (pairs["source"] != "").any():
            groups |= {s: (pairs["source"] == s).to_numpy() for s in sorted(set(pairs["source"]))}
        for name, sel in groups.items():
            entry["by_source"][name] = observed_and_model_mc(
                model, pairs[sel].reset_index(drop=True), psi[sel], seed=seed)
        out[mig] = entry
    return out, notes
