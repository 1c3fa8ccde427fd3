"""Synthetic flight paths sampled from a fitted chain, their files, statistics and forecasts.

A route is a sequence of weekly cells drawn from the model (:meth:`BirdFlowModel.route`):
the first cell at a given point, or drawn from a distribution (the start week's S&T or model
distribution by default), each next one from the forward transition of the current cell, or
from the backward one (the joint normalised by columns) when sampling back in time. Routes
only ever sit in cells of their week's dynamic mask. Time is given as dates or 1-based S&T
weeks (:mod:`birdflow.model.timeline`); tables follow BirdFlowR's ``BirdFlowRoutes``
(:mod:`birdflow.model.sampling`) and read back through the tracks reader.

Command: ``birdflow routes run=<dir> [n=100] [start_week=1] [weeks=52] [lon=.. lat=..]
[seed=0]`` (:mod:`birdflow.cli.routes`) writes them into the run dir with
:func:`write_run_routes`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from birdflow.data.grid import great_circle_km
from birdflow.errors import ConfigError
from birdflow.io import atomic_path, write_text_atomic
from birdflow.model import starts
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.sampling import ROUTE_COLUMNS
from birdflow.model.timeline import week_position

__all__ = ["ROUTE_COLUMNS", "forecast", "lonlat_to_cell", "route_stats", "sample_routes",
           "write_routes", "write_run_routes"]

ROUTES_CSV = "routes.csv"  # in the run dir; read back by ``birdflow maps`` and the tracks reader


def _week_position(model: BirdFlowModel, week: int) -> int:
    """0-based index in the model's weeks of S&T week number ``week``."""
    return week_position(model.data, int(week), "start_week")


def sample_routes(model: BirdFlowModel, n: int, start_week=None, n_weeks: int | None = None,
                  start_lonlat=None, seed: int = 0, *, start=None, end=None,
                  direction: str | None = None, distr: np.ndarray | None = None,
                  from_marginals: bool = True, season: str | None = None,
                  season_buffer: int = 1) -> pd.DataFrame:
    """Sample ``n`` routes (per start point) from the fitted chain, forward or backward.

    Args:
        model: the fitted chain.
        n: routes per start point, or in all when the start cells are drawn.
        start_week, start: where time starts: a date or a 1-based S&T week (either name;
            default the model's first week, or the season's first week).
        n_weeks: weekly steps to take when ``end`` is None (default: to the model's end, a
            year for cyclic models); each route has ``n_weeks + 1`` positions.
        end: a date or S&T week to stop at, instead of ``n_weeks``.
        direction: "forward" (default; implied by two dates) or "backward" (transposed joints).
        start_lonlat: (lon, lat) or (k, 2) start points in degrees; each starts ``n`` routes.
        distr: (n_cells,) distribution to draw the start cells from.
        from_marginals: with neither, draw start cells from the model's distribution of the
            start week (True, the pipeline's choice) or from the S&T one (False, BirdFlowR's
            default).
        season: "prebreeding", "breeding", "postbreeding" or "nonbreeding" (or BirdFlowR's
            aliases): route over that season (:func:`birdflow.data.seasons.season_span`),
            ``season_buffer`` weeks wider on each side (BirdFlowR's ``route_migration``).
        seed: numpy random seed.

    Returns:
        BirdFlowRoutes-style table (:data:`ROUTE_COLUMNS`), rows in time order per route;
        dates increase across new year.
    """
    if start_week is not None and start is not None:
        raise ConfigError("give start= or start_week=, not both")
    start = start if start is not None else start_week
    if end is None and n_weeks is None and season is None:  # to the model's end / a year
        first = start if start is not None else int(model.data["week"].values[0])
        n_weeks = model.n_transitions - (0 if model.cyclic else week_position(model.data, first))
    return model.route(n, start, end, n_steps=n_weeks, direction=direction, lonlat=start_lonlat,
                       distr=distr, from_marginals=from_marginals, season=season,
                       season_buffer=season_buffer, seed=seed)


def lonlat_to_cell(model: BirdFlowModel, lon: float, lat: float) -> int:
    """Index of the active cell holding (lon, lat) in degrees; DataError outside the grid."""
    return starts.lonlat_to_cell(model.data, lon, lat)


def write_routes(df: pd.DataFrame, csv_path: str | os.PathLike,
                 geojson_path: str | os.PathLike,
                 points_path: str | os.PathLike | None = None) -> None:
    """Write the route table as CSV, GeoJSON lines and (optionally) GeoJSON timestamped points.

    Lines: one LineString per route (lon/lat) with its dates and weeks as properties.
    Points: one Point per route and week with ``time`` (ISO date, the per-step time GIS
    tools animate by), ``route_id``, ``timestep``, ``week``, ``i``, ``stay_id``, ``stay_len``.
    """
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, date_format="%Y-%m-%d")
    features, points = [], []
    for rid, r in df.groupby("route_id", sort=True):
        r = r.sort_values("date", kind="stable")
        coords = [[round(float(a), 6), round(float(b), 6)] for a, b in zip(r["lon"], r["lat"], strict=True)]
        dates = [f"{d:%Y-%m-%d}" for d in pd.DatetimeIndex(r["date"])]
        geom = ({"type": "LineString", "coordinates": coords} if len(coords) > 1
                else {"type": "Point", "coordinates": coords[0]})
        props = {"route_id": int(rid), "start_date": dates[0], "end_date": dates[-1], "dates": dates,
                 "weeks": [int(w) for w in r["week"]], "cells": [int(c) for c in r["i"]]}
        features.append({"type": "Feature", "geometry": geom, "properties": props})
        for k, (xy, date) in enumerate(zip(coords, dates, strict=True)):
            row = r.iloc[k]
            points.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": xy},
                           "properties": {"route_id": int(rid), "time": date,
                                          "timestep": int(row["timestep"]), "week": int(row["week"]),
                                          "i": int(row["i"]), "stay_id": int(row["stay_id"]),
                                          "stay_len": int(row["stay_len"])}})
    write_text_atomic(geojson_path, json.dumps({"type": "FeatureCollection", "features": features}))
    if points_path is not None:
        write_text_atomic(points_path, json.dumps({"type": "FeatureCollection", "features": points}))


def write_run_routes(df: pd.DataFrame, run_dir: str | os.PathLike) -> tuple[list[Path], dict]:
    """Write routes (CSV, GeoJSON lines and points) and their statistics into ``run_dir``.

    Returns the paths written and the summary statistics of :func:`route_stats`.
    """
    run = Path(run_dir)
    paths = [run / ROUTES_CSV, run / "routes.geojson", run / "routes_points.geojson",
             run / "route_stats.csv"]
    write_routes(df, *paths[:3])
    per_route, summary = route_stats(df)
    with atomic_path(paths[3]) as tmp:
        per_route.to_csv(tmp)
    return paths, summary


def _one_route_stats(r: pd.DataFrame, min_stopover_weeks: int) -> dict:
    lon, lat, cell = r["lon"].to_numpy(), r["lat"].to_numpy(), r["i"].to_numpy()
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
    rows = {rid: _one_route_stats(r.sort_values("date", kind="stable"), min_stopover_weeks)
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
        "median_departure_week": median_week(dep.dropna().to_numpy()),
        "median_arrival_week": median_week(arr.dropna().to_numpy()),
    }
    return per_route, summary


def median_week(weeks: np.ndarray, n_weeks: int = 52) -> float | None:
    """The median of S&T weeks on the cyclic year (None for none).

    Weeks are unwrapped around their circular mean before the median is taken, so a winter
    season's departures in weeks 50-52 and 1-3 have a median near the turn of the year, not
    in mid-summer; the result is wrapped back to 1..n_weeks.
    """
    weeks = np.asarray(weeks, float)
    if not weeks.size:
        return None
    angle = 2 * np.pi * (weeks - 1) / n_weeks
    centre = np.angle(np.exp(1j * angle).mean()) * n_weeks / (2 * np.pi) + 1
    unwrapped = centre + (weeks - centre + n_weeks / 2) % n_weeks - n_weeks / 2
    return float((np.median(unwrapped) - 1) % n_weeks + 1)


def forecast(model: BirdFlowModel, lon: float, lat: float, date, k_weeks: int) -> np.ndarray:
    """Where a bird seen at (lon, lat) on ``date`` will be over the next ``k_weeks`` weeks.

    Returns:
        (k_weeks + 1, n_cells) distributions over active cells; row 0 is the one-hot start.
    """
    return model.predict((lon, lat), date, n_steps=k_weeks).values
