"""Synthetic flight paths sampled from a fitted chain, their statistics, and forecasts.

A route is a sequence of weekly cells drawn from the model: the first cell from the model's
distribution at the start week (or the cell holding a given lon/lat), each next cell from
the transition row of the current one. Routes only ever sit in cells of their week's dynamic
mask because the transition rows put zero probability elsewhere.

CLI: ``python -m birdflow.routes run=<dir> [n=100] [start_week=1] [weeks=52] [lon=.. lat=..]
[seed=0]`` writes ``routes.csv``, ``routes.geojson`` and ``route_stats.csv`` into the run dir.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from birdflow.data.grid import from_lonlat, great_circle_km, snap_to_cells
from birdflow.data.weeks import date_to_week
from birdflow.errors import ConfigError, DataError
from birdflow.io import atomic_path, write_text_atomic
from birdflow.model.fitted import BirdFlowModel

ROUTE_COLUMNS = ["route_id", "step", "week", "date", "cell", "x", "y", "lon", "lat"]


def _week_position(model: BirdFlowModel, week: int) -> int:
    """0-based index in the model's weeks of S&T week number ``week``."""
    weeks = model.data["week"].values
    hit = np.flatnonzero(weeks == int(week))
    if not hit.size:
        raise ConfigError(f"start_week={week}: the model covers S&T weeks {weeks[0]}..{weeks[-1]}; "
                          "pick a week inside that range")
    return int(hit[0])


def _check_span(model: BirdFlowModel, t0: int, n_weeks: int) -> None:
    if n_weeks < 0:
        raise ConfigError(f"weeks={n_weeks}: the number of weeks to move must be >= 0")
    if not model.cyclic and t0 + n_weeks > model.n_transitions:
        weeks = model.data["week"].values
        raise ConfigError(f"weeks={n_weeks} from S&T week {weeks[t0]} runs past the last week "
                          f"({weeks[-1]}) of this truncated model; use weeks <= "
                          f"{model.n_transitions - t0}")


def lonlat_to_cell(model: BirdFlowModel, lon: float, lat: float) -> int:
    """Index of the active cell holding (lon, lat) in degrees; DataError outside the grid."""
    ds = model.data
    x, y = from_lonlat([lon], [lat], ds.rio.crs)
    cell = int(snap_to_cells(x, y, ds["x"].values, ds["y"].values, ds["static_mask"].values)[0])
    if cell < 0:
        raise DataError(f"lon={lon}, lat={lat}: not in an active cell of the model grid "
                        f"(lon {ds['cell_lon'].values.min():.1f}..{ds['cell_lon'].values.max():.1f}, "
                        f"lat {ds['cell_lat'].values.min():.1f}..{ds['cell_lat'].values.max():.1f}); "
                        "choose a location inside the species' range")
    return cell


def _start_cell_ok(model: BirdFlowModel, cell: int, t0: int, lon: float, lat: float) -> None:
    if not model.data["dynamic_mask"].values[t0, cell] or model.distr(t0)[cell] <= 0:
        week = int(model.data["week"].values[t0])
        raise DataError(f"lon={lon}, lat={lat}: cell {cell} is outside the dynamic mask of week "
                        f"{week} (the species is absent there); choose another location or week")


def sample_routes(model: BirdFlowModel, n: int, start_week: int, n_weeks: int,
                  start_lonlat: tuple[float, float] | None = None, seed: int = 0) -> pd.DataFrame:
    """Sample ``n`` routes of ``n_weeks`` weekly moves from the fitted chain.

    Args:
        model: the fitted chain.
        n: number of routes.
        start_week: S&T week number (1..52) of the first position.
        n_weeks: weekly transitions to take; each route has ``n_weeks + 1`` positions.
            Cyclic models wrap 52 -> 1; truncated models may not run past their last week.
        start_lonlat: (lon, lat) degrees; every route starts in the cell holding it.
            None: starts are drawn from the model distribution at ``start_week``.
        seed: numpy random seed.

    Returns:
        Long table, one row per (route, step): route_id, step, week (S&T number), date
        (week centre; +1 year after each wrap so dates increase), cell, x, y (metres, model
        CRS), lon, lat (degrees).
    """
    if n < 1:
        raise ConfigError(f"n={n}: the number of routes must be >= 1")
    t0 = _week_position(model, start_week)
    _check_span(model, t0, n_weeks)
    rng = np.random.default_rng(seed)
    if start_lonlat is not None:
        lon, lat = start_lonlat
        cell0 = lonlat_to_cell(model, lon, lat)
        _start_cell_ok(model, cell0, t0, lon, lat)
        cells = np.full(n, cell0, dtype=np.int64)
    else:
        d0 = model.distr(t0)
        cells = rng.choice(model.n_cells, size=n, p=d0 / d0.sum())
    path = [cells]
    slot_cell = model.index.slot_cell
    for k in range(n_weeks):
        t = (t0 + k) % model.n_transitions
        # work in the week's slot layout (n_max wide), not on dense n_cells^2 transitions
        slot_of = np.full(model.n_cells, -1)
        ok = slot_cell[t % model.index.n_weeks] >= 0
        slot_of[slot_cell[t % model.index.n_weeks][ok]] = np.flatnonzero(ok)
        rows = np.cumsum(model.marginals[t][slot_of[cells]], axis=1)  # (n, n_max) joint CDFs
        total = rows[:, -1]
        if np.any((total <= 0) | (slot_of[cells] < 0)):
            dead = int(cells[np.flatnonzero((total <= 0) | (slot_of[cells] < 0))[0]])
            raise DataError(f"cell {dead} has no outgoing probability in transition {t + 1}; the "
                            "model has a dead end there (re-fit, or import it without sparsifying)")
        u = rng.random(n) * total
        # first slot whose CDF exceeds u: always a real cell with positive probability
        slots = np.argmax(rows > u[:, None], axis=1)
        cells = slot_cell[(t + 1) % model.index.n_weeks][slots]
        path.append(cells)
    return _routes_frame(model, np.stack(path, axis=1), t0)


def _routes_frame(model: BirdFlowModel, cells: np.ndarray, t0: int) -> pd.DataFrame:
    """(n_routes, n_steps) cell indices -> the long route table."""
    ds = model.data
    n, n_steps = cells.shape
    steps = np.arange(n_steps)
    pos = (t0 + steps) % model.index.n_weeks
    years = (t0 + steps) // model.index.n_weeks
    dates = pd.DatetimeIndex(ds["date"].values[pos])
    dates = pd.DatetimeIndex([d + pd.DateOffset(years=int(yr)) for d, yr in zip(dates, years, strict=True)])
    flat = cells.ravel()
    return pd.DataFrame({
        "route_id": np.repeat(np.arange(1, n + 1), n_steps),
        "step": np.tile(steps, n),
        "week": np.tile(ds["week"].values[pos], n),
        "date": np.tile(dates.values, n),
        "cell": flat,
        "x": ds["cell_x"].values[flat],
        "y": ds["cell_y"].values[flat],
        "lon": ds["cell_lon"].values[flat],
        "lat": ds["cell_lat"].values[flat],
    })


def write_routes(df: pd.DataFrame, csv_path: str | os.PathLike,
                 geojson_path: str | os.PathLike) -> None:
    """Write the route table as CSV and as GeoJSON (one LineString per route, lon/lat)."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, date_format="%Y-%m-%d")
    features = []
    for rid, r in df.sort_values(["route_id", "step"]).groupby("route_id", sort=True):
        coords = [[round(float(a), 6), round(float(b), 6)] for a, b in zip(r["lon"], r["lat"], strict=True)]
        dates = [f"{d:%Y-%m-%d}" for d in pd.DatetimeIndex(r["date"])]
        geom = ({"type": "LineString", "coordinates": coords} if len(coords) > 1
                else {"type": "Point", "coordinates": coords[0]})
        props = {"route_id": int(rid), "start_date": dates[0], "end_date": dates[-1], "dates": dates,
                 "weeks": [int(w) for w in r["week"]], "cells": [int(c) for c in r["cell"]]}
        features.append({"type": "Feature", "geometry": geom, "properties": props})
    write_text_atomic(geojson_path, json.dumps({"type": "FeatureCollection", "features": features}))


def _one_route_stats(r: pd.DataFrame, min_stopover_weeks: int) -> dict:
    lon, lat, cell = r["lon"].to_numpy(), r["lat"].to_numpy(), r["cell"].to_numpy()
    steps_km = great_circle_km(lon[:-1], lat[:-1], lon[1:], lat[1:])
    length = float(steps_km.sum())
    displacement = float(great_circle_km(lon[0], lat[0], lon[-1], lat[-1]))
    # stays: runs of identical consecutive cells; a stay's length counts its weekly positions
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    lengths = np.diff(np.r_[starts, len(cell)])
    inner = lengths[1:-1]
    stopovers = inner[inner >= min_stopover_weeks]
    moved = np.flatnonzero(cell[1:] != cell[:-1])  # move k goes from position k to k + 1
    weeks = r["week"].to_numpy()
    return {
        "n_weeks": len(cell) - 1,
        "distance_km": length,
        "displacement_km": displacement,
        "straightness": displacement / length if length > 0 else np.nan,
        "n_moves": len(moved),
        "n_stays": len(lengths),
        "n_stopovers": len(stopovers),
        "stopover_weeks": ";".join(str(int(s)) for s in stopovers),
        "mean_stopover_weeks": float(stopovers.mean()) if len(stopovers) else np.nan,
        "departure_week": int(weeks[moved[0]]) if len(moved) else pd.NA,
        "arrival_week": int(weeks[moved[-1] + 1]) if len(moved) else pd.NA,
    }


def route_stats(df: pd.DataFrame, min_stopover_weeks: int = 2) -> tuple[pd.DataFrame, dict]:
    """Per-route statistics and their summary.

    Per route: ``distance_km`` (sum of great-circle steps), ``displacement_km`` (first to
    last position), ``straightness`` (displacement / distance; NaN if it never moves),
    ``n_moves`` (weekly steps to another cell), stays (runs of consecutive positions in one
    cell; a stay of k positions lasts k weeks, BirdFlowR's ``stay_len`` is k - 1),
    ``n_stopovers`` / ``stopover_weeks`` (stays other than the first and last lasting
    >= ``min_stopover_weeks`` weeks), ``departure_week`` (S&T week of the position the first
    move leaves) and ``arrival_week`` (week of the position the last move reaches).

    Returns:
        (per-route DataFrame indexed by route_id, summary dict of means/medians and counts).
    """
    rows = {rid: _one_route_stats(r.sort_values("step"), min_stopover_weeks)
            for rid, r in df.groupby("route_id", sort=True)}
    per_route = pd.DataFrame.from_dict(rows, orient="index")
    per_route.index.name = "route_id"
    dep = pd.to_numeric(per_route["departure_week"], errors="coerce")
    arr = pd.to_numeric(per_route["arrival_week"], errors="coerce")
    summary = {
        "n_routes": len(per_route),
        "mean_distance_km": float(per_route["distance_km"].mean()),
        "median_distance_km": float(per_route["distance_km"].median()),
        "mean_displacement_km": float(per_route["displacement_km"].mean()),
        "mean_straightness": float(per_route["straightness"].mean()),
        "mean_n_stopovers": float(per_route["n_stopovers"].mean()),
        "frac_with_stopover": float((per_route["n_stopovers"] > 0).mean()),
        "frac_never_moved": float((per_route["n_moves"] == 0).mean()),
        "median_departure_week": float(dep.median()) if dep.notna().any() else None,
        "median_arrival_week": float(arr.median()) if arr.notna().any() else None,
    }
    return per_route, summary


def forecast(model: BirdFlowModel, lon: float, lat: float, date, k_weeks: int) -> np.ndarray:
    """Where a bird seen at (lon, lat) on ``date`` will be over the next ``k_weeks`` weeks.

    Returns:
        (k_weeks + 1, n_cells) distributions over active cells; row 0 is the one-hot start.
    """
    week = int(date_to_week([date])[0])
    t0 = _week_position(model, week)
    _check_span(model, t0, k_weeks)
    cell = lonlat_to_cell(model, lon, lat)
    _start_cell_ok(model, cell, t0, lon, lat)
    start = np.zeros(model.n_cells)
    start[cell] = 1.0
    return model.forecast(start, t0, k_weeks)
