"""Migration seasons and BirdFlowPipeline's per-season distribution metrics (reference 3.7-3.8).

BirdFlowPipeline's metrics table reports ``distribution_performance`` over the prebreeding
and postbreeding migrations (each widened by ``season_buffer = 1`` week on both sides) and
the mean over the two: ``min_dist_cor``, ``mean_dist_cor``, ``traverse_cor`` (model start,
``md_traverse_cor``) and ``traverse_cor_st``. Its model selection filters on that
two-season ``min_dist_cor``, not on the whole-year ``min_distr_cor``.

Season dates are the data's species season fields (:mod:`birdflow.data.seasons`) or are
given as S&T week ranges.
"""

from __future__ import annotations

import numpy as np

from birdflow.data.seasons import season_span
from birdflow.errors import BirdFlowError, DataError
from birdflow.evaluation.metrics import distribution_performance
from birdflow.model.fitted import BirdFlowModel

MIGRATIONS = ("prebreeding", "postbreeding")
SEASON_BUFFER = 1  # weeks added on each side (BirdFlowPipeline's season_buffer)
# BirdFlowPipeline column <- our distribution_performance key
SEASON_METRICS = {"min_dist_cor": "min_distr_cor", "mean_dist_cor": "mean_distr_cor",
                  "traverse_cor": "md_traverse_cor", "traverse_cor_st": "st_traverse_cor"}


def migration_seasons(ds, buffer: int = SEASON_BUFFER) -> dict[str, tuple[int, int]]:
    """S&T week ranges (first, last) of the two migrations, padded by ``buffer`` weeks.

    Args:
        ds: BirdFlowData whose attributes carry the species' season dates
            (:mod:`birdflow.data.seasons`: config, raster tags or inferred).
        buffer: weeks added on each side, wrapping around the year.

    Returns:
        {"prebreeding": (first, last), "postbreeding": (first, last)} for the seasons the
        data have dates for and the model covers ({} when none).
    """
    out = {}
    for season in MIGRATIONS:
        try:
            out[season] = season_span(ds, season, buffer)
        except DataError:
            continue
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
