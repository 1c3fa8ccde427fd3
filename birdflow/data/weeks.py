"""eBird Status & Trends week calendar: 52 weekly timesteps, cyclic.

For S&T version years >= 2022 the week centres are the days of year 4, 11, ..., 361
(``julian = 4 + 7 (k - 1)``) of the version year, and a date maps to the week whose
7-day window holds it (breaks at 7.5, 14.5, ..., 357.5; the last week takes the rest
of the year). Older (2021) products used 52 equal fractions of the year; we use the same
rule for every year because it differs from the old one by at most a day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

N_WEEKS = 52


def week_dates(version_year: int) -> pd.DatetimeIndex:
    """Centre dates of S&T weeks 1..52 in ``version_year``."""
    start = pd.Timestamp(year=int(version_year), month=1, day=1)
    return pd.DatetimeIndex([start + pd.Timedelta(days=3 + 7 * k) for k in range(N_WEEKS)])


def date_to_week(dates) -> np.ndarray:
    """S&T week (1..52) of each date (any year); NaT gives 0."""
    idx = pd.DatetimeIndex(pd.to_datetime(dates))
    doy = np.asarray(idx.day_of_year, dtype=float)
    week = np.clip(np.floor((doy - 0.5) / 7.0) + 1, 1, N_WEEKS)
    week = np.where(np.isnan(doy), 0, week)
    return week.astype(np.int64)


def week_labels(version_year: int) -> list[str]:
    """Labels such as 'January 4' for the 52 week centres."""
    return [f"{d:%B} {d.day}" for d in week_dates(version_year)]


def increasing_dates(dates, direction: int = 1) -> pd.DatetimeIndex:
    """Move dates by whole years so that they strictly increase (``direction=-1``: decrease).

    The first date is kept; each next one is put in the first year where it follows its
    predecessor (for -1: the last year where it precedes it). A season that crosses new
    year (S&T weeks 45..52, 1..10, all dated in one version year) gets its January dates in
    the next year; a route sampled backwards from week 2 gets week 52 in the year before.
    """
    idx = pd.DatetimeIndex(pd.to_datetime(dates))
    out = list(idx[:1])
    for d in idx[1:]:
        years = out[-1].year - d.year
        while (d + pd.DateOffset(years=years) - out[-1]) * direction <= pd.Timedelta(0):
            years += direction
        out.append(d + pd.DateOffset(years=years))
    return pd.DatetimeIndex(out)
