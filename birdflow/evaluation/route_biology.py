"""Route biology of tracks and of model routes, side by side: speed, straightness, stopovers,
departure and arrival, per migration season.

Each tracked bird's fixes inside a migration's window (the season's S&T weeks widened by
``buffer`` weeks, per year: a window across new year is one window) form a segment of at
least three fixes. The model gets the same segment to fly: ``n_routes`` routes sampled from the
first fix's cell and week (:func:`birdflow.model.sampling.sample_cells`) to the last fix's
week, each seen only at the weeks the bird was fixed. Both are then measured alike on cell
centres (so in-cell jitter of the fixes does not count as movement):

============================  =============================================================
quantity                      per segment
============================  =============================================================
speed_km_day                  km between consecutive fixes in different cells / their days
straightness                  first-to-last km / the summed km between fixes (NaN: no move)
n_stopovers                   stays (runs of fixes in one cell) other than the first and last
                              spanning >= 2 weeks
stopover_weeks                weeks each such stay spans (one value per stopover)
departure_week                weeks from the window's start to the fix the first move leaves
arrival_week                  weeks from the window's start to the fix the last move reaches
============================  =============================================================

The distance between the two distributions of each quantity is the Wasserstein-1 distance
(in the quantity's units) and the two-sample Kolmogorov–Smirnov statistic with its p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from birdflow.data.grid import great_circle_km
from birdflow.data.seasons import season_span
from birdflow.data.weeks import N_WEEKS
from birdflow.errors import BirdFlowError
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.sampling import sample_cells

QUANTITIES = ("speed_km_day", "straightness", "n_stopovers", "stopover_weeks",
              "departure_week", "arrival_week")
MIN_FIXES = 3
N_ROUTES = 10  # model routes per tracked segment
BUFFER = 2  # weeks added to each side of a migration season


def segments(rows: pd.DataFrame, ds, migration: str, buffer: int = BUFFER) -> pd.DataFrame:
    """Fixes of each bird inside each yearly window of ``migration`` (segments of >= 3 fixes).

    Returns:
        The usable rows with ``segment`` (an id), ``offset`` (weeks from the window's start)
        and ``w0`` (the window's first S&T week).
    """
    w0, w1 = season_span(ds, migration, buffer=buffer)
    ok = rows[(rows["problem"] == "") & (rows["cell"] >= 0) & (rows["t"] >= 0)].copy()
    offset = (ok["week"].to_numpy() - w0) % N_WEEKS
    absolute = ok["date"].dt.year.to_numpy() * N_WEEKS + ok["week"].to_numpy() - 1
    ok["offset"], ok["window"] = offset, absolute - offset
    ok = ok[offset <= (w1 - w0) % N_WEEKS]
    ok = ok.sort_values(["bird_id", "window", "date", "line"], kind="stable")
    ok = ok.drop_duplicates(["bird_id", "window", "offset"])  # one fix per week
    size = ok.groupby(["bird_id", "window"])["offset"].transform("size")
    ok = ok[size >= MIN_FIXES]
    ok["segment"] = ok.groupby(["bird_id", "window"], sort=False).ngroup()
    ok["w0"] = w0
    return ok.reset_index(drop=True)


def measure(cells: np.ndarray, offsets: np.ndarray, days: np.ndarray, ds) -> dict:
    """The quantities of one sequence of fixes (cells, weeks from the window start, days)."""
    lon, lat = ds["cell_lon"].values[cells], ds["cell_lat"].values[cells]
    km = great_circle_km(lon[:-1], lat[:-1], lon[1:], lat[1:])
    moved = cells[1:] != cells[:-1]
    dt = np.diff(days)
    path = km.sum()
    starts = np.flatnonzero(np.r_[True, moved])
    ends = np.r_[starts[1:], len(cells)] - 1
    span = offsets[ends] - offsets[starts] + 1  # weeks each stay covers
    stop = span[1:-1][span[1:-1] >= 2]
    move_at = np.flatnonzero(moved)
    return {
        "speed_km_day": km[moved].sum() / dt[moved].sum() if moved.any() else np.nan,
        "straightness": great_circle_km(lon[0], lat[0], lon[-1], lat[-1]) / path if path > 0
        else np.nan,
        "n_stopovers": float(len(stop)),
        "stopover_weeks": stop.astype(float).tolist(),
        "departure_week": float(offsets[move_at[0]]) if moved.any() else np.nan,
        "arrival_week": float(offsets[move_at[-1] + 1]) if moved.any() else np.nan,
    }


def _table(values: list[dict], segment_info: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{**info, **v} for info, v in zip(segment_info, values, strict=True)])


def route_biology(model: BirdFlowModel, rows: pd.DataFrame, migration: str, *,
                  n_routes: int = N_ROUTES, seed: int = 0,
                  buffer: int = BUFFER) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Per-segment quantities of the tracks and of the model's routes over the same segments.

    Returns:
        (observed, model, n_skipped): one row per tracked segment (bird_id, source, segment
        and :data:`QUANTITIES`), one row per model route (``n_routes`` per segment), and the
        segments the model could not start (a start cell without probability onward).
    """
    seg = segments(rows, model.data, migration, buffer)
    rng = np.random.default_rng(seed)
    obs, sim, obs_info, sim_info, skipped = [], [], [], [], 0
    for _, g in seg.groupby("segment", sort=True):
        cells, offsets = g["cell"].to_numpy(), g["offset"].to_numpy()
        days = (g["date"] - g["date"].iloc[0]).dt.days.to_numpy(dtype=float)
        info = {"bird_id": g["bird_id"].iloc[0], "segment": int(g["segment"].iloc[0]),
                "source": g["source"].iloc[0] if "source" in g else ""}
        steps = offsets - offsets[0]
        try:
            tl = model.timeline(int(g["week"].iloc[0]), n_steps=int(steps[-1]))
        except BirdFlowError:
            skipped += 1
            continue
        if not model.support(tl)[cells[0]]:
            skipped += 1
            continue
        paths = sample_cells(model, np.full(n_routes, cells[0]), tl, rng)[:, steps]
        obs.append(measure(cells, offsets, days, model.data))
        obs_info.append(info)
        for path in paths:
            sim.append(measure(path, offsets, days, model.data))
            sim_info.append(info)
    return _table(obs, obs_info), _table(sim, sim_info), skipped


def quantity_values(df: pd.DataFrame, q: str) -> np.ndarray:
    """The finite values of quantity ``q`` in a per-segment table (stopovers flattened)."""
    if df.empty or q not in df:
        return np.zeros(0)
    col = df[q]
    if q == "stopover_weeks":
        return np.array([v for lst in col for v in lst], dtype=float)
    return col.to_numpy(dtype=float)[~np.isnan(col.to_numpy(dtype=float))]


def compare_quantities(observed: pd.DataFrame, model: pd.DataFrame) -> dict:
    """Per quantity: n and median of each side, Wasserstein-1 and KS (statistic, p-value)."""
    out = {}
    for q in QUANTITIES:
        a, b = quantity_values(observed, q), quantity_values(model, q)
        row = {"n_observed": int(a.size), "n_model": int(b.size),
               "median_observed": float(np.median(a)) if a.size else None,
               "median_model": float(np.median(b)) if b.size else None,
               "mean_observed": float(a.mean()) if a.size else None,
               "mean_model": float(b.mean()) if b.size else None,
               "wasserstein": None, "ks": None, "ks_p": None}
        if a.size and b.size:
            ks = stats.ks_2samp(a, b)
            row |= {"wasserstein": float(stats.wasserstein_distance(a, b)),
                    "ks": float(ks.statistic), "ks_p": float(ks.pvalue)}
        out[q] = row
    return out


def route_biology_by_source(model: BirdFlowModel, rows: pd.DataFrame, migrations, *,
                            n_routes: int = N_ROUTES, seed: int = 0) -> tuple[dict, dict, list[str]]:
    """{migration: {source or 'all': compare_quantities(...)}}, the per-segment tables
    ({migration: (observed, model)}) and notes."""
    out, tables, notes = {}, {}, []
    for mig in migrations:
        try:
            obs, sim, skipped = route_biology(model, rows, mig, n_routes=n_routes, seed=seed)
        except BirdFlowError as e:
            notes.append(f"{mig} route biology skipped: {e}")
            continue
        if skipped:
            notes.append(f"{mig} route biology: {skipped} segment(s) start where the model "
                         "cannot move on; left out")
        tables[mig] = (obs, sim)
        out[mig] = {"all": compare_quantities(obs, sim)}
        if not obs.empty and (obs["source"] != "").any():
            for s in sorted(set(obs["source"])):
                out[mig][s] = compare_quantities(obs[obs["source"] == s], sim[sim["source"] == s])
    return out, tables, notes
