"""Sampling birds from a known cyclic chain: the synthetic species' true tracks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdflow.data.grid import to_lonlat
from birdflow.model.fitted import BirdFlowModel
from birdflow.synthetic.flyway import N_WEEKS


def _draw_columns(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row of ``weights`` (rows, K), drawn with probability proportional to it.

    Inverse-CDF sampling of all rows at once; zero-weight entries are never drawn.
    """
    cum = np.cumsum(weights, axis=1)
    cum = np.divide(cum, cum[:, -1:], out=np.ones_like(cum), where=cum[:, -1:] > 0)
    # searchsorted over all rows at once: row r occupies (r, r + 1] after adding r
    offset = np.arange(len(weights))
    flat = (cum + offset[:, None]).ravel()
    pick = np.searchsorted(flat, rng.random(len(weights)) + offset, side="right")
    return np.clip(pick - offset * cum.shape[1], 0, cum.shape[1] - 1)


def sample_tracks(model: BirdFlowModel, n_tracks: int, seed: int, *, max_gap_weeks: int = 3,
                  version_year: int = 2022) -> pd.DataFrame:
    """Sample birds from a cyclic chain for one year each, starting at a random week.

    Each bird starts in a uniform random week w0 (of ``version_year``) at a cell drawn from the
    model's distribution of w0, then moves by the weekly transitions for 51 steps. It is fixed
    at its first week and then every 1..``max_gap_weeks`` weeks; a fix's date is the week
    centre +- up to 3 days and its position uniform inside the cell.

    A neighbourhood-sparse model (``index.nbr``) is sampled from its stored rows only.

    Returns:
        DataFrame with ``bird_id, date, lat, lon`` (degrees WGS84) and the true ``week``
        (1..52) and ``cell`` (active-cell index), one row per fix, by bird then date.
    """
    if not model.cyclic or model.index.n_weeks != N_WEEKS:
        raise ValueError("sample_tracks needs a cyclic 52-week model (a year of transitions)")
    rng = np.random.default_rng([seed, 1])
    ds, idx = model.data, model.index
    start = rng.integers(0, N_WEEKS, n_tracks)
    cell = np.zeros((n_tracks, N_WEEKS), dtype=np.int64)
    for w in range(N_WEEKS):
        birds = np.flatnonzero(start == w)
        p = model.distr_at(w)
        cell[birds, 0] = rng.choice(p.size, size=birds.size, p=p / p.sum())
    for u in range(2 * N_WEEKS - 2):  # absolute week index; bird b moves at u = start_b + k
        t = u % N_WEEKS
        k = u - start
        movers = np.flatnonzero((k >= 0) & (k < N_WEEKS - 1))
        if movers.size == 0:
            continue
        src, dst = idx.slot_cell[t], idx.slot_cell[(t + 1) % N_WEEKS]
        dmi = np.full(model.n_cells, -1)
        dmi[src[src >= 0]] = np.arange(int((src >= 0).sum()))
        rows = dmi[cell[movers, k[movers]]]
        if idx.nbr is not None:  # sparse: only the movers' rows, never a dense week
            nbr = idx.nbr[t][rows]
            pick = _draw_columns(np.where(nbr >= 0, model.marginals[t][rows], 0.0), rng)
            cell[movers, k[movers] + 1] = dst[nbr[np.arange(len(rows)), pick]]
        else:
            cell[movers, k[movers] + 1] = dst[_draw_columns(model.marginal_at(t)[rows], rng)]
    gaps = rng.integers(1, max_gap_weeks + 1, (n_tracks, N_WEEKS))
    steps = np.cumsum(np.column_stack([np.zeros(n_tracks, int), gaps[:, :-1]]), axis=1)
    bird, col = np.nonzero(steps < N_WEEKS)
    k = steps[bird, col]
    absolute = start[bird] + k
    week = absolute % N_WEEKS + 1
    year = version_year + absolute // N_WEEKS
    jan1 = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    date = jan1 + (3 + 7 * (week - 1) + rng.integers(-3, 4, bird.size)).astype("timedelta64[D]")
    c = cell[bird, k]
    res_m = float(ds.attrs["res_km"]) * 1e3
    x = ds["cell_x"].values[c] + (rng.random(c.size) - 0.5) * 0.999 * res_m
    y = ds["cell_y"].values[c] + (rng.random(c.size) - 0.5) * 0.999 * res_m
    lon, lat = to_lonlat(x, y, ds.attrs["crs_wkt"])
    width = len(str(n_tracks))
    return pd.DataFrame({"bird_id": [f"syn{b + 1:0{width}d}" for b in bird],
                         "date": pd.DatetimeIndex(date), "lat": lat, "lon": lon,
                         "week": week, "cell": c})
