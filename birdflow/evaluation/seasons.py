"""Migration seasons and BirdFlowPipeline's per-season distribution metrics (reference 3.7-3.8).

BirdFlowPipeline's metrics table reports ``distribution_performance`` over the prebreeding
and postbreeding migrations (each widened by ``season_buffer = 1`` week on both sides) and
the mean over the two: ``min_dist_cor``, ``mean_dist_cor``, ``traverse_cor`` (model start,
``md_traverse_cor``) and ``traverse_cor_st``. Its model selection filters on that
two-season ``min_dist_cor``, not on the whole-year ``min_distr_cor``.

Season dates come from the S&T species table (``prebreeding_migration_start`` ... as data
attributes, as BirdFlowR files carry them) or are given as S&T week ranges.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdflow.data.weeks import N_WEEKS, date_to_week
from birdflow.errors import BirdFlowError
from birdflow.evaluation.metrics import distribution_performance
from birdflow.model.fitted import BirdFlowModel

MIGRATIONS = ("prebreeding", "postbreeding")
SEASON_BUFFER = 1  # weeks added on each side (BirdFlowPipeline's season_buffer)
# BirdFlowPipeline column <- our distribution_performance key
SEASON_METRICS = {"min_dist_cor": "min_distr_cor", "mean_dist_cor": "mean_distr_cor",
                  "traverse_cor": "md_traverse_cor", "traverse_cor_st": "st_traverse_cor"}


def migration_seasons(attrs: dict, buffer: int = SEASON_BUFFER) -> dict[str, tuple[int, int]]:
    """S&T week ranges (first, last) of the two migrations from species season dates.

    Args:
        attrs: BirdFlowData attributes with ``<season>_migration_start`` / ``_end`` dates.
        buffer: weeks added on each side, wrapping around the year.

    Returns:
        {"prebreeding": (first, last), "postbreeding": (first, last)} for the seasons whose
        dates are present and parse ({} when none do).
    """
    out = {}
    for season in MIGRATIONS:
        start, end = (attrs.get(f"{season}_migration_{k}") for k in ("start", "end"))
        dates = pd.to_datetime(pd.Series([start, end], dtype=object), errors="coerce")
        if dates.isna().any():
            continue
        first, last = (int(w) for w in date_to_week(dates))
        out[season] = ((first - 1 - buffer) % N_WEEKS + 1, (last - 1 + buffer) % N_WEEKS + 1)
    return out


def season_performance(model: BirdFlowModel,
                       seasons: dict[str, tuple[int, int]]) -> tuple[dict, list[str]]:
    """BirdFlowPipeline's per-season columns and their two-migration means.

    Returns:
        (metrics, notes): ``<metric>_<season>`` for each season that the model covers, and
        ``<metric>`` = the mean over the two migrations when both are there; notes say why a
        season was left out.
    """
    out: dict = {}
    notes: list[str] = []
    for season, weeks in seasons.items():
        try:
            perf = distribution_performance(model, tuple(weeks))
        except BirdFlowError as e:
            notes.append(f"{season} migration metrics skipped: {e}")
            continue
        out |= {f"{col}_{season}": perf[key] for col, key in SEASON_METRICS.items()}
    if all(f"min_dist_cor_{s}" in out for s in MIGRATIONS):
        out |= {col: float(np.mean([out[f"{col}_{s}"] for s in MIGRATIONS]))
                for col in SEASON_METRICS}
    return out, notes
