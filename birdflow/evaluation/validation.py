"""``birdflow validate``: judge a model the way the field validates one, per data source.

Four parts on one tracks CSV, each per source (the CSV's optional ``source`` column:
tracking, banding, telemetry) and pooled (``all``):

* calibration of the interval forecasts (:mod:`birdflow.evaluation.calibration`);
* migratory connectivity, observed and modelled (:mod:`birdflow.evaluation.connectivity`);
* route biology of tracks and model routes (:mod:`birdflow.evaluation.route_biology`);
* skill against elapsed days and km (:mod:`birdflow.evaluation.horizon`).

:func:`validate_model` returns the figures as a JSON-ready dict plus the tables behind them;
:mod:`birdflow.evaluation.report` writes them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from birdflow.data.seasons import season_name, season_span
from birdflow.data.tracks import TrackRowWarning, Tracks, load_tracks
from birdflow.data.weeks import N_WEEKS
from birdflow.errors import ConfigError, DataError
from birdflow.evaluation import calibration, connectivity, horizon, route_biology
from birdflow.evaluation.evaluate import _clean
from birdflow.io import write_text_atomic
from birdflow.model.fitted import BirdFlowModel

POOLED = "all"
log = logging.getLogger("birdflow.evaluation.validation")


@dataclass
class Validation:
    """What :func:`validate_model` found: ``result`` (JSON-ready) and the tables behind it."""

    result: dict
    scored: pd.DataFrame
    routes: dict = field(default_factory=dict)  # migration -> (observed, model) per segment


def migrations_for(season: str | None) -> tuple[str, ...]:
    """The migrations to report: both, or the one ``season`` names (prebreeding/postbreeding)."""
    if season is None:
        return tuple(connectivity.MIGRATIONS)
    name = season_name(season)
    short = name.removesuffix("_migration")
    if short not in connectivity.MIGRATIONS:
        raise ConfigError(f"season={season}: validation follows a migration; use "
                          "season=prebreeding or season=postbreeding (or leave it out for both)")
    return (short,)


def _groups(values: pd.Series) -> dict[str, pd.Series]:
    """``all`` plus one mask per source present (a bird seen by two kinds: 'a+b')."""
    out = {POOLED: pd.Series(True, index=values.index)}
    named = sorted(s for s in set(values) if s)
    if named:
        out |= {s: values == s for s in named}
    return out


def validate_model(model: BirdFlowModel, tracks: Tracks | str | os.PathLike, *,
                   season: str | None = None, n_routes: int = route_biology.N_ROUTES,
                   seed: int = 0) -> Validation:
    """Every validation figure of ``model`` on ``tracks`` (a CSV path or built Tracks).

    Args:
        model: the fitted chain (dense, sparse or imported).
        tracks: tracking/banding CSV (``bird_id,date,lat,lon[,source]``) or :class:`Tracks`.
        season: None (both migrations, all intervals) or "prebreeding" / "postbreeding":
            that migration, and only the intervals starting in it (widened by a week).
        n_routes: model routes per tracked segment for route biology.
        seed: seeds every random draw (PIT uniforms, bootstrap, routes).

    Returns:
        :class:`Validation`; ``result`` holds ``calibration``, ``connectivity``,
        ``route_biology`` and ``horizon`` keyed by source (``all`` pooled), the counts behind
        them, ``timings_s`` per part and ``notes``.
    """
    if int(n_routes) < 1:
        raise ConfigError(f"n_routes={n_routes}: fly at least 1 model route per tracked segment")
    timings, notes = {}, []
    t0 = time.perf_counter()
    if not isinstance(tracks, Tracks):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TrackRowWarning)
            tracks = load_tracks(tracks, model.data, cyclic=model.cyclic)
        for w in caught:  # bad rows: one line naming them, in the log and the report's notes
            if issubclass(w.category, TrackRowWarning):
                log.warning(str(w.message))
                notes.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    timings["read tracks"] = time.perf_counter() - t0
    migrations = migrations_for(season)

    t0 = time.perf_counter()
    intervals = tracks.intervals
    if season is not None:  # the intervals that start in the migration (buffered by a week)
        w0, w1 = season_span(model.data, migrations[0], buffer=1)
        intervals = intervals[(intervals["week1"] - w0) % N_WEEKS <= (w1 - w0) % N_WEEKS]
    scored = calibration.score(model, intervals, seed=seed)
    if scored.empty:
        raise DataError(f"{tracks.source}: no interval could be scored on this model's grid "
                        f"(excluded: {tracks.excluded_counts()}); check that the tracks are of "
                        "this species and inside the model's weeks")
    groups = _groups(scored["source"])
    cal = {g: calibration.summarise(scored[m]) for g, m in groups.items()}
    timings["calibration (forecasts)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    hor = {g: horizon.horizon(scored[m]) for g, m in groups.items()}
    timings["horizon"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mc, mc_notes = connectivity.connectivity(model, tracks.rows, migrations, seed=seed)
    timings["connectivity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bio, tables, bio_notes = route_biology.route_biology_by_source(
        model, tracks.rows, migrations, n_routes=n_routes, seed=seed)
    timings["route biology"] = time.perf_counter() - t0
    notes += mc_notes + bio_notes  # after the bad-row note

    rows = tracks.rows
    counts = tracks.excluded_counts()
    result = {
        "tracks": str(tracks.source),
        "sources": [g for g in groups if g != POOLED],
        "season": list(migrations),
        "n_rows": int(len(rows)),
        "n_rows_left_out": int((rows["problem"] != "").sum()),
        "n_intervals": int(len(scored)),
        "intervals_excluded": counts,
        "calibration": cal,
        "horizon": hor,
        "connectivity": mc,
        "route_biology": bio,
        "route_windows": {mig: list(season_span(model.data, mig, buffer=route_biology.BUFFER))
                          for mig in bio},
        "settings": {"n_routes": n_routes, "seed": seed,
                     "bootstrap": connectivity.N_BOOT, "route_draws": connectivity.N_ROUTE_DRAWS,
                     "route_buffer_weeks": route_biology.BUFFER},
        "timings_s": timings,
        "notes": notes,
    }
    return Validation(result=_clean(result), scored=scored, routes=tables)


def resolve_tracks(tracks: str | os.PathLike | None, run_dir: Path | None) -> Path:
    """The tracks to validate on: as given, else the run's own (``run.json``)."""
    from birdflow.runs import run_path

    path = Path(tracks) if tracks else (run_path(run_dir, "tracks") if run_dir else None)
    if path is None:
        raise ConfigError(f"{run_dir}: the run names no tracks; pass tracks=<csv with columns "
                          "bird_id,date,lat,lon[,source]>")
    return path


def validate_run(run_dir: str | os.PathLike | None = None, model: BirdFlowModel | None = None,
                 tracks: str | os.PathLike | Tracks | None = None, *, season: str | None = None,
                 out_dir: str | os.PathLike | None = None, n_routes: int = route_biology.N_ROUTES,
                 seed: int = 0) -> dict:
    """Validate a run dir (or a model) and write ``<run>/validation/`` (or ``out_dir``).

    ``tracks`` defaults to the run's own (``run.json``). Prints which parts took the time.
    Returns the result dict with ``report`` (the path of report.md) and ``out_dir``.
    """
    from birdflow.evaluation.report import VALIDATION_DIR, VALIDATION_JSON, write_report
    from birdflow.model.fitted import load_model

    t_all = time.perf_counter()
    if model is None:
        if run_dir is None:
            raise ConfigError("validate: give a run dir or a model")
        model = load_model(run_dir)
    run_dir = Path(run_dir) if run_dir is not None else model.run_dir
    if not isinstance(tracks, Tracks):
        if run_dir is None and tracks is None:
            raise ConfigError("validate: a model without a run dir needs tracks=<csv>")
        tracks = resolve_tracks(tracks, run_dir)
    if out_dir is None:
        if run_dir is None:
            raise ConfigError("validate: a model without a run dir needs out_dir=<folder>")
        out_dir = Path(run_dir) / VALIDATION_DIR
    v = validate_model(model, tracks, season=season, n_routes=n_routes, seed=seed)
    t0 = time.perf_counter()
    hp = model.hyperparameters
    a = model.data.attrs
    meta = [f"model: {run_dir or 'in memory'} ({hp.get('location_loss', '?')} location loss, "
            f"{model.n_cells} cells, {'sparse' if model.sparse else 'dense'})",
            f"species: {a.get('common_name') or a.get('species_code', '?')}, {a.get('res_km')} km",
            f"tracks: {v.result['tracks']} ({v.result['n_rows']} rows, "
            f"{v.result['n_rows_left_out']} left out; {v.result['n_intervals']} intervals scored)",
            "sources: " + (", ".join(v.result["sources"]) or "one (no source column)")]
    report = write_report(v, out_dir, f"Validation: {a.get('common_name') or 'model'}", meta)
    v.result["timings_s"]["report and figures"] = time.perf_counter() - t0
    v.result["timings_s"]["total"] = time.perf_counter() - t_all
    write_text_atomic(Path(out_dir) / VALIDATION_JSON,
                      json.dumps(v.result, indent=2, allow_nan=False) + "\n")
    return v.result | {"report": str(report), "out_dir": str(out_dir)}


def format_timings(timings: dict) -> str:
    """One line: the parts by time taken, largest first."""
    total = timings.get("total") or sum(timings.values())
    parts = sorted(((k, s) for k, s in timings.items() if k != "total"), key=lambda x: -x[1])
    return f"validated in {total:.1f} s: " + ", ".join(f"{k} {s:.1f} s" for k, s in parts)
