"""Tracking/banding CSV -> observations snapped to (cell, week) -> intervals to score.

The CSV has one observation per row with columns ``bird_id,date,lat,lon`` (extra columns
are kept but unused). An optional ``source`` column says what kind of data each row is:
``tracking`` (GPS, GLS, satellite tags), ``banding`` (band-and-recover pairs) or ``telemetry``
(automated receivers such as Motus); the aliases in :data:`SOURCE_ALIASES` are accepted in any
case. Validation reports every metric per source and pooled; a bad value is a bad row (named
by its line, its intervals excluded as ``bad_row``). A ``route_id`` column stands in for
``bird_id`` when that is absent, so BirdFlowR ``Routes``/``BirdFlowRoutes`` tables (``route_id, date, lon, lat, ...``) and the
routes birdflow samples (``routes.csv``) are read as tracks. Rows that cannot be used (unparsable date, latitude or longitude out of
range, a point outside the grid or on an inactive cell) are reported with their CSV line
number (1-based, the header is line 1) and the rest is still evaluated. Consecutive
observations of one bird, ordered by date, form intervals; each interval gets an ``exclude``
reason (empty when it can be scored):

==================  ==============================================================
reason              meaning
==================  ==============================================================
bad_row             an end has an unusable latitude, longitude or source
not_active          an end lies outside the grid or on an inactive cell
too_long            more days apart than ``max_days`` (only when set: BirdFlowR sets no cap)
truncated           a week outside a truncated model's weeks, or no forward lag
same_week           both ends in the same S&T week less than 7 days apart
dynamic_mask        an end lies outside its week's dynamic mask
filtered            outside the optional min_days or min/max km window
==================  ==============================================================

The lag (transitions to project) is the S&T week difference, across new year in cyclic
models; two observations in the same S&T week but 7 or more days apart (a year later) are a
full cycle, lag = 52, not ``same_week``. Intervals the model gives exactly zero probability
are scored, not excluded (BirdFlowR's 1e-8 floor, birdflow_reference.md section 3.4).

Intervals longer than a year (banding recoveries, multi-year tracks) are scored on the
chain's cyclic year: the lag is the number of transitions from t1 forward to t2's week, 1..52
in a cyclic model, and the whole years in between are not projected (BirdFlowR's
``interval_log_likelihood`` convention: "multi-year pairs by their timestep difference,
cyclically"). A recovery 3 years and 5 weeks after banding is scored as a 5-week interval; its
``wrapped_years`` is 3. Evaluation and tuning both score ``lag``, so they agree; filter on
``wrapped_years`` (or pass ``max_days``) to leave such intervals out.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from birdflow.data.grid import from_lonlat, great_circle_km, snap_to_cells
from birdflow.data.weeks import N_WEEKS, date_to_week
from birdflow.errors import DataError

TRACK_COLUMNS = ("bird_id", "date", "lat", "lon")
EXCLUDE_REASONS = ("bad_row", "not_active", "too_long", "truncated", "same_week",
                   "dynamic_mask", "filtered")
ID_ALIAS = "route_id"  # BirdFlowR Routes tables name the bird column so
SOURCE_COLUMN = "source"  # optional: the kind of data of each row
SOURCES = ("tracking", "banding", "telemetry")
BAD_SOURCE = "?"  # a source value that is none of SOURCES (the row is a bad row)
SOURCE_ALIASES = {"tracking": "tracking", "gps": "tracking", "gls": "tracking",
                  "satellite": "tracking", "argos": "tracking", "banding": "banding",
                  "band": "banding", "ringing": "banding", "ring": "banding",
                  "recovery": "banding", "telemetry": "telemetry", "motus": "telemetry",
                  "radio": "telemetry"}


def source_name(value: str) -> str:
    """The canonical source of a ``source`` cell (:data:`SOURCES`), '' when not recognised."""
    return SOURCE_ALIASES.get(str(value).strip().lower(), "")


class TrackRowWarning(UserWarning):
    """Some rows of a tracks CSV were unusable and left out (the rest is evaluated)."""


@dataclass
class Tracks:
    """Observations and intervals of one tracks CSV on one model grid.

    Attributes:
        rows: one row per CSV data row: bird_id, date, lat, lon, line, x, y, cell (-1 = none),
            week (S&T week 1..52, 0 = no date), t (0-based model week index, -1 = not modelled),
            problem ('' when usable).
        intervals: one row per pair of consecutive observations of a bird (see module doc).
        source: the CSV path, for messages.
    """

    rows: pd.DataFrame
    intervals: pd.DataFrame
    source: str

    def excluded_counts(self) -> dict[str, int]:
        """Number of intervals per exclusion reason (every reason listed, 0 when absent)."""
        counts = self.intervals["exclude"].value_counts()
        return {r: int(counts.get(r, 0)) for r in EXCLUDE_REASONS}


def read_tracks(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a tracks CSV row by row.

    Returns:
        DataFrame with bird_id (str), date (datetime64, NaT when unparsable), lat, lon
        (degrees, NaN when unusable), line (CSV line number), source (one of :data:`SOURCES`;
        '' when the file has no ``source`` column, ``BAD_SOURCE`` when the value is not
        recognised) and problem ('' when fine).

    Raises:
        DataError: the file is missing, empty or lacks one of the required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tracks CSV not found; pass tracks=<csv with columns "
                        f"{','.join(TRACK_COLUMNS)}>")
    try:
        records, header = _read_records(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a text CSV file ({type(e).__name__}); pass a tracks CSV "
                        f"with the header {','.join(TRACK_COLUMNS)} (UTF-8 text)") from None
    has_source = SOURCE_COLUMN in header
    columns = [*TRACK_COLUMNS, SOURCE_COLUMN] if has_source else list(TRACK_COLUMNS)
    df = pd.DataFrame(records, columns=[*columns, "line"])
    source = (df[SOURCE_COLUMN].map(source_name).replace("", BAD_SOURCE) if has_source
              else pd.Series("", index=df.index, dtype=object))
    dates = pd.to_datetime(df["date"], errors="coerce", format="ISO8601", utc=True)
    lat = pd.to_numeric(df["lat"], errors="coerce")
    lon = pd.to_numeric(df["lon"], errors="coerce")
    problem = np.full(len(df), "", dtype=object)
    checks = [
        (df["bird_id"] == "", "empty bird_id"),
        (dates.isna(), "unparsable date {date!r} (expected YYYY-MM-DD)"),
        (lat.isna(), "lat {lat!r} is not a number"),
        (lat.abs() > 90, "lat {lat} outside [-90, 90]"),
        (lon.isna(), "lon {lon!r} is not a number"),
        (lon.abs() > 180, "lon {lon} outside [-180, 180]"),
    ]
    if has_source:
        checks.append((source == BAD_SOURCE, "source {source!r} is not one of " + ", ".join(SOURCES)
                       + " (or gps, gls, argos, ringing, recovery, motus)"))
    for bad, template in checks:
        for i in np.flatnonzero(bad.to_numpy() & (problem == "")):
            problem[i] = template.format(**df.iloc[i].to_dict())
    coords_ok = ~(lat.isna() | (lat.abs() > 90) | lon.isna() | (lon.abs() > 180))
    return pd.DataFrame({
        "bird_id": df["bird_id"].astype(str),
        "date": dates.dt.tz_convert(None).dt.normalize(),
        "lat": lat.where(coords_ok).astype(float),
        "lon": lon.where(coords_ok).astype(float),
        "line": df["line"].astype(np.int64),
        "source": source.astype(str),
        "problem": problem.astype(str),
    })


def _read_records(path: Path) -> tuple[list[dict], list[str]]:
    """The CSV's rows (the required columns, stripped, and the line number) and its header."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        if "\0" in f.read(4096):
            raise csv.Error("NUL bytes: a binary file")
        f.seek(0)
        reader = csv.DictReader(f)
        header = [c.strip() for c in (reader.fieldnames or [])]
        if "bird_id" not in header and ID_ALIAS in header:  # a Routes table
            header = ["bird_id" if c == ID_ALIAS else c for c in header]
        missing = [c for c in TRACK_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} in header {header}; expected a "
                            f"header line '{','.join(TRACK_COLUMNS)}' (extra columns allowed; "
                            f"'{ID_ALIAS}' may replace 'bird_id')")
        reader.fieldnames = header
        columns = [*TRACK_COLUMNS, SOURCE_COLUMN] if SOURCE_COLUMN in header else TRACK_COLUMNS
        records = []
        for rec in reader:
            records.append({c: (rec.get(c) or "").strip() for c in columns}
                           | {"line": reader.line_num})
    return records, header


def snap_tracks(rows: pd.DataFrame, ds: xr.Dataset) -> pd.DataFrame:
    """Add projected x/y, the active cell (-1 if none), the S&T week and the model week index.

    Points outside the grid extent or on an inactive cell get a ``problem`` (if they have none).
    """
    out = rows.copy()
    ok = out["lat"].notna().to_numpy()
    x = np.full(len(out), np.nan)
    y = np.full(len(out), np.nan)
    if ok.any():
        x[ok], y[ok] = from_lonlat(out["lon"].to_numpy()[ok], out["lat"].to_numpy()[ok],
                                   ds.attrs.get("crs_wkt") or ds.rio.crs)
    xc, yc = ds["x"].values, ds["y"].values
    static = ds["static_mask"].values.astype(bool)
    cell = snap_to_cells(x, y, xc, yc, static)
    in_extent = snap_to_cells(x, y, xc, yc, np.ones_like(static)) >= 0
    week = date_to_week(out["date"])
    position = {int(w): i for i, w in enumerate(ds["week"].values)}
    out["x"], out["y"], out["cell"], out["week"] = x, y, cell, week
    out["t"] = np.array([position.get(int(w), -1) for w in week], dtype=np.int64)
    problem = out["problem"].to_numpy(dtype=object)
    fine = problem == ""
    problem[fine & ~in_extent] = "point outside the model grid"
    problem[fine & in_extent & (cell < 0)] = "point on an inactive (masked) cell"
    out["problem"] = problem.astype(str)
    return out


def make_intervals(rows: pd.DataFrame, ds: xr.Dataset, *, cyclic: bool | None = None,
                   min_days: float | None = None, max_days: float | None = None,
                   min_km: float | None = None, max_km: float | None = None) -> pd.DataFrame:
    """Pair consecutive observations of each bird (by date) into intervals with exclusion reasons.

    Rows without a bird_id or a date cannot be placed in time and form no interval.

    Args:
        rows: output of :func:`snap_tracks`.
        ds: BirdFlowData of the model (weeks, dynamic masks).
        cyclic: whether the 52 -> 1 transition exists (default: ``ds.attrs['cyclic']``).
        min_days, max_days, min_km, max_km: optional window on elapsed days / great-circle km
            (between the observed points); intervals longer than ``max_days`` get
            ``exclude = 'too_long'``, others outside it ``'filtered'``. None (default) = no
            bound, BirdFlowR's ``interval_log_likelihood`` convention.

    Returns:
        DataFrame with bird_id, line1, line2, date1, date2, week1, week2 (S&T weeks), t1, t2
        (model week indices), lag (transitions, -1 if undefined), wrapped_years (whole years
        between the observations that the lag leaves out, see the module doc), cell1, cell2,
        lon1, lat1, lon2, lat2, elapsed_days, elapsed_km, source (the rows' source when both
        ends agree, else both joined by '+'; '' without a ``source`` column) and exclude.
    """
    cyclic = bool(ds.attrs.get("cyclic", 1)) if cyclic is None else bool(cyclic)
    n_weeks = ds.sizes["week"]
    usable = rows[(rows["bird_id"] != "") & rows["date"].notna()]
    usable = usable.sort_values(["bird_id", "date", "line"], kind="stable")
    first, second = usable.iloc[:-1].reset_index(drop=True), usable.iloc[1:].reset_index(drop=True)
    same_bird = (first["bird_id"].to_numpy() == second["bird_id"].to_numpy())
    a, b = first[same_bird].reset_index(drop=True), second[same_bird].reset_index(drop=True)
    t1, t2 = a["t"].to_numpy(), b["t"].to_numpy()
    days = (b["date"] - a["date"]).dt.days.to_numpy(dtype=float)
    same_week = (a["week"].to_numpy() == b["week"].to_numpy()) & (days < 7)
    lag = (t2 - t1) % n_weeks if cyclic else t2 - t1
    if cyclic:  # same week a year (or more) later: one full cycle
        lag = np.where((lag == 0) & ~same_week, n_weeks, lag)
    lag = np.where((t1 < 0) | (t2 < 0) | (lag <= 0), -1, lag)
    # S&T weeks counted from a fixed origin: whatever they add beyond the lag is whole years
    span = ((b["date"].dt.year - a["date"].dt.year) * N_WEEKS + b["week"] - a["week"]).to_numpy()
    wrapped = np.where(lag > 0, (span - lag) // N_WEEKS, 0)
    km = great_circle_km(a["lon"], a["lat"], b["lon"], b["lat"])
    dyn = ds["dynamic_mask"].values.astype(bool)
    c1, c2 = a["cell"].to_numpy(), b["cell"].to_numpy()

    def in_mask(t, c):
        ok = (t >= 0) & (c >= 0)
        res = np.zeros(len(t), dtype=bool)
        res[ok] = dyn[t[ok], c[ok]]
        return res

    bad_coord = a["lat"].isna().to_numpy() | b["lat"].isna().to_numpy()
    if "source" in a:
        bad_coord |= (a["source"].to_numpy() == BAD_SOURCE) | (b["source"].to_numpy() == BAD_SOURCE)
    window = np.zeros(len(a), dtype=bool)
    for value, lo, hi in ((days, min_days, None), (km, min_km, max_km)):
        if lo is not None:
            window |= value < lo
        if hi is not None:
            window |= value > hi
    rules = [
        ("bad_row", bad_coord),
        ("not_active", (c1 < 0) | (c2 < 0)),
        ("too_long", days > max_days if max_days is not None else np.zeros(len(a), bool)),
        ("truncated", (t1 < 0) | (t2 < 0) | ((lag < 0) & ~same_week)),
        ("same_week", same_week),
        ("dynamic_mask", ~in_mask(t1, c1) | ~in_mask(t2, c2)),
        ("filtered", window),
    ]
    exclude = np.full(len(a), "", dtype=object)
    for reason, hit in rules:
        exclude[(exclude == "") & hit] = reason
    return pd.DataFrame({
        "bird_id": a["bird_id"], "line1": a["line"], "line2": b["line"],
        "date1": a["date"], "date2": b["date"], "week1": a["week"], "week2": b["week"],
        "t1": t1, "t2": t2, "lag": lag, "wrapped_years": wrapped, "cell1": c1, "cell2": c2,
        "lon1": a["lon"], "lat1": a["lat"], "lon2": b["lon"], "lat2": b["lat"],
        "elapsed_days": days, "elapsed_km": km, "source": _pair_source(a, b),
        "exclude": exclude.astype(str),
    })


def _pair_source(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Source of each interval: the two ends' source, or both sorted and joined by '+'."""
    if "source" not in a:
        return np.full(len(a), "", dtype=object)
    return np.array([x if x == y else "+".join(sorted((x, y)))
                     for x, y in zip(a["source"], b["source"], strict=True)], dtype=object)


def row_problem_summary(rows: pd.DataFrame, source: str, n_show: int = 5) -> str:
    """One line naming the first offending rows, or '' when every row is usable."""
    bad = rows[rows["problem"] != ""].sort_values("line")
    if bad.empty:
        return ""
    shown = "; ".join(f"line {ln}: {p}" for ln, p in zip(bad["line"][:n_show], bad["problem"][:n_show],
                                                        strict=True))
    more = f"; and {len(bad) - n_show} more" if len(bad) > n_show else ""
    return (f"{source}: {len(bad)} of {len(rows)} rows left out ({shown}{more}); fix or remove "
            "these rows — the other rows are still evaluated")


def load_tracks(path: str | os.PathLike, ds: xr.Dataset, *, cyclic: bool | None = None,
                warn: bool = True, **window) -> Tracks:
    """Read, validate and snap a tracks CSV and form its intervals on the grid of ``ds``.

    Emits a :class:`TrackRowWarning` naming the first offending CSV lines when some rows are
    unusable. ``window`` takes min_days, max_days, min_km, max_km (see :func:`make_intervals`).
    """
    rows = snap_tracks(read_tracks(path), ds)
    msg = row_problem_summary(rows, str(path))
    if msg and warn:
        warnings.warn(msg, TrackRowWarning, stacklevel=2)
    return Tracks(rows=rows, intervals=make_intervals(rows, ds, cyclic=cyclic, **window),
                  source=str(path))
