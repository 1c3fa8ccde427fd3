"""Migration seasons: prebreeding / breeding / postbreeding / nonbreeding date ranges.

A BirdFlowData carries them as BirdFlowR's species fields, attributes
``<season>_start`` / ``<season>_end`` (``YYYY-MM-DD``) and ``<season>_quality`` (0..3,
NaN unknown), for the seasons of :data:`SEASONS`. They come from, in this order:

1. the species config, ``seasons: {prebreeding_migration: [start, end], ...}`` (dates);
2. the S&T raster, when its GeoTIFF tags carry them (``<season>_start`` etc.; the
   synthetic species' generator writes those of its known chain);
3. inference from the distributions (:func:`infer_seasons`, full-year data only):
   the weekly mean latitude ``phi_t`` of the S&T distribution is rescaled to
   ``s_t = (phi_t - min phi) / (max phi - min phi)``. *Breeding* is the run of consecutive
   weeks (cyclically) with ``s_t >= 0.9`` around the northernmost week, *nonbreeding* the run
   with ``s_t <= 0.1`` around the southernmost week, *prebreeding migration* the weeks
   between the end of nonbreeding and the start of breeding, *postbreeding migration* those
   between the end of breeding and the start of nonbreeding. The rule assumes a
   northern-hemisphere breeder (breeding = the northern extreme); quality is NaN.

:func:`season_span` turns a season into S&T start/end weeks padded by ``buffer`` weeks,
as BirdFlowR's ``lookup_season_timesteps(season_buffer = 1)`` does (reference §1.8).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from birdflow.data.weeks import N_WEEKS, date_to_week
from birdflow.errors import ConfigError, DataError

SEASONS = ("prebreeding_migration", "breeding", "postbreeding_migration", "nonbreeding")
ALIASES = {"prebreeding": "prebreeding_migration", "pre": "prebreeding_migration",
           "spring": "prebreeding_migration", "postbreeding": "postbreeding_migration",
           "post": "postbreeding_migration", "fall": "postbreeding_migration",
           "breed": "breeding", "summer": "breeding", "non": "nonbreeding",
           "winter": "nonbreeding", **{s: s for s in SEASONS}}
BREEDING_LEVEL = 0.9
NONBREEDING_LEVEL = 0.1


def season_name(season: str) -> str:
    """Canonical season name of ``season`` or an alias; ConfigError otherwise."""
    key = str(season).strip().lower()
    if key not in ALIASES:
        raise ConfigError(f"season={season!r}: unknown season; use one of {list(SEASONS)} or "
                          "prebreeding, postbreeding, breeding, nonbreeding (spring, fall, ...)")
    return ALIASES[key]


def _run_around(mask: np.ndarray, centre: int) -> tuple[int, int]:
    """First and last index of the cyclic run of True in ``mask`` that holds ``centre``."""
    n = len(mask)
    lo = hi = centre
    while mask[(lo - 1) % n] and (centre - lo) < n - 1:
        lo -= 1
    while mask[(hi + 1) % n] and (hi - lo) < n - 1:
        hi += 1
    return lo % n, hi % n


def infer_seasons(ds: xr.Dataset) -> dict[str, str]:
    """Season attributes inferred from the weekly mean latitude (module doc); full year only."""
    if ds.sizes["week"] != N_WEEKS:
        raise DataError(f"{ds.attrs.get('source', 'data')}: seasons can only be inferred from 52 "
                        "weeks; give them in the species config (seasons:)")
    phi = ds["distr"].values @ ds["cell_lat"].values
    s = (phi - phi.min()) / max(float(np.ptp(phi)), 1e-12)
    b0, b1 = _run_around(s >= BREEDING_LEVEL, int(np.argmax(phi)))
    n0, n1 = _run_around(s <= NONBREEDING_LEVEL, int(np.argmin(phi)))
    spans = {"breeding": (b0, b1), "nonbreeding": (n0, n1),
             "prebreeding_migration": ((n1 + 1) % N_WEEKS, (b0 - 1) % N_WEEKS),
             "postbreeding_migration": ((b1 + 1) % N_WEEKS, (n0 - 1) % N_WEEKS)}
    dates = pd.DatetimeIndex(ds["date"].values)
    out = {}
    for name, (a, b) in spans.items():
        out[f"{name}_start"], out[f"{name}_end"] = f"{dates[a]:%Y-%m-%d}", f"{dates[b]:%Y-%m-%d}"
        out[f"{name}_quality"] = float("nan")
    return out


def _from_config(seasons: Mapping) -> dict:
    out = {}
    for key, value in dict(seasons).items():
        name = season_name(key)
        try:
            a, b = (pd.Timestamp(str(v)) for v in value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"species.seasons.{key}={value!r}: give [start, end] dates "
                              "(YYYY-MM-DD)") from e
        out[f"{name}_start"], out[f"{name}_end"] = f"{a:%Y-%m-%d}", f"{b:%Y-%m-%d}"
    return out


def season_attrs(ds: xr.Dataset, config: Mapping | None = None,
                 raster_tags: Mapping | None = None) -> dict:
    """Season attributes for ``ds``: config first, then raster tags, then inferred (module doc)."""
    keys = [f"{s}_{k}" for s in SEASONS for k in ("start", "end", "quality")]
    out = {}
    if ds.sizes["week"] == N_WEEKS:
        out.update(infer_seasons(ds))
    out.update({k: v for k, v in (raster_tags or {}).items() if k in keys and v not in ("", None)})
    out.update(_from_config(config or {}))
    return out


def season_span(ds: xr.Dataset, season: str, buffer: int = 1) -> tuple[int, int]:
    """S&T (start, end) weeks of ``season`` padded by ``buffer`` weeks each side.

    Wraps around the year; on a truncated model the span is cut to the model's weeks.

    Raises:
        ConfigError: unknown season; DataError: the data carry no dates for it.
    """
    name = season_name(season)
    a, b = ds.attrs.get(f"{name}_start"), ds.attrs.get(f"{name}_end")
    if not a or not b:
        raise DataError(f"{ds.attrs.get('source', 'model data')}: no {name} dates (species "
                        f"fields {name}_start/_end are empty); set species.seasons in the config")
    w0, w1 = (int(w) for w in date_to_week([pd.Timestamp(a), pd.Timestamp(b)]))
    w0, w1 = (w0 - 1 - buffer) % N_WEEKS + 1, (w1 - 1 + buffer) % N_WEEKS + 1
    weeks = [int(w) for w in ds["week"].values]
    if len(weeks) < N_WEEKS:  # truncated: keep the part of the span the model covers
        span = [(w0 - 1 + k) % N_WEEKS + 1 for k in range((w1 - w0) % N_WEEKS + 1)]
        inside = [w for w in span if w in weeks]
        if len(inside) < 2:
            raise DataError(f"season {name} (S&T weeks {w0}..{w1}) is not inside the model's weeks "
                            f"{weeks[0]}..{weeks[-1]}")
        w0, w1 = inside[0], inside[-1]
    return w0, w1
