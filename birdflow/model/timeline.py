"""One time convention for every public function: a date or a 1-based S&T week number.

``start``/``end`` of routes and predictions are either dates (``"2022-03-15"``,
``datetime.date``, ``pandas.Timestamp``, ``numpy.datetime64``) or S&T week numbers (1..52,
plain ``int``). :func:`timeline` converts them once into the model's 0-based week
*positions* (the index into ``data["week"]``), the transitions to use and the dates written
for every step. Dates always run with time: forward they increase, backward they decrease,
across new year included (a step from week 52 to week 1 moves into the next year).

Direction: ``forward`` moves with the transitions ``M_t`` (week t -> t + 1), ``backward``
against them with the transposed joints (``p_t(i) = sum_j M_t[i, j] / colsum_j p_{t+1}(j)``).
Two dates imply it (an end before the start is backward); with week numbers the default is
forward, and a cyclic model wraps around the year in either direction. (A fitted cyclic chain
is not tied at 52 -> 1: the last joint's column sums differ a little from the first joint's
row sums, so forward/backward agreement across new year holds only up to that mismatch.)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from birdflow.data.weeks import N_WEEKS, date_to_week, increasing_dates
from birdflow.errors import ConfigError

DIRECTIONS = ("forward", "backward")


def is_date(when) -> bool:
    """True for date-like values (str, date, Timestamp, datetime64); False for week numbers."""
    return isinstance(when, str | dt.date | pd.Timestamp | np.datetime64)


def parse_when(when, key: str = "start") -> tuple[int, pd.Timestamp | None]:
    """``(S&T week 1..52, the date or None)`` of a date or a week number; ConfigError otherwise."""
    if is_date(when):
        try:  # strings: ISO 8601 only (dateutil would read "March 40th" as 2040-03-01)
            date = pd.Timestamp(pd.to_datetime(when, format="ISO8601") if isinstance(when, str)
                                else when)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{key}={when!r}: not a date; give YYYY-MM-DD or an S&T week "
                              "number 1..52") from e
        if pd.isna(date):
            raise ConfigError(f"{key}={when!r}: not a date; give YYYY-MM-DD or a week 1..52")
        return int(date_to_week([date])[0]), date.normalize()
    try:
        week = int(when)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}={when!r}: give a date (YYYY-MM-DD) or an S&T week number "
                          "1..52") from e
    if week != when or not 1 <= week <= N_WEEKS:
        raise ConfigError(f"{key}={when!r}: S&T week numbers are whole numbers 1..52; or give a "
                          "date (YYYY-MM-DD)")
    return week, None


def week_position(ds: xr.Dataset, when, key: str = "start") -> int:
    """0-based position in the model's weeks of a date or S&T week; ConfigError outside them."""
    week, date = parse_when(when, key)
    weeks = ds["week"].values
    hit = np.flatnonzero(weeks == week)
    if not hit.size:
        what = f"{key}={when} (S&T week {week})" if date is not None else f"{key}={week}"
        raise ConfigError(f"{what} is outside the model's weeks {int(weeks[0])}..{int(weeks[-1])} "
                          f"({pd.Timestamp(ds['date'].values[0]):%b %d} to "
                          f"{pd.Timestamp(ds['date'].values[-1]):%b %d}); pick a date or week "
                          "inside them")
    return int(hit[0])


@dataclass(frozen=True)
class Timeline:
    """The steps of a route or prediction.

    Attributes:
        positions: (n_steps + 1,) 0-based week positions visited, in the order of travel.
        transitions: (n_steps,) index of the joint used by each step (``M[transitions[k]]``
            links ``positions[k]`` and ``positions[k + 1]``).
        dates: (n_steps + 1,) week-centre dates, increasing forward, decreasing backward.
        weeks: (n_steps + 1,) S&T week numbers.
        direction: "forward" or "backward".
    """

    positions: np.ndarray
    transitions: np.ndarray
    dates: pd.DatetimeIndex
    weeks: np.ndarray
    direction: str

    @property
    def n_steps(self) -> int:
        return len(self.transitions)

    @property
    def sign(self) -> int:
        return 1 if self.direction == "forward" else -1


def _direction(direction, start, end, d0, d1) -> str:
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"direction={direction!r}: use 'forward' or 'backward'")
    implied = None
    if d0 is not None and d1 is not None and d0 != d1:
        implied = "forward" if d1 > d0 else "backward"
    if direction is not None and implied is not None and direction != implied:
        raise ConfigError(f"direction={direction}: start={start} and end={end} are dates that "
                          f"imply {implied}; swap them or leave direction out")
    return direction or implied or "forward"


def timeline(ds: xr.Dataset, cyclic: bool, start, end=None, *, n_steps: int | None = None,
             direction: str | None = None) -> Timeline:
    """Steps from ``start`` to ``end`` (or ``n_steps`` steps) on the weeks of ``ds``.

    Args:
        ds: BirdFlowData of the model (weeks, dates).
        cyclic: whether the 52 -> 1 transition exists.
        start, end: dates or S&T week numbers (see module doc); give ``end`` or ``n_steps``.
        n_steps: number of weekly steps when ``end`` is None.
        direction: "forward", "backward" or None (implied by two dates; else forward).

    Raises:
        ConfigError: a date/week outside the model's weeks, a direction that contradicts the
            dates, or a span a truncated model cannot cover.
    """
    p0 = week_position(ds, start, "start")
    _, d0 = parse_when(start, "start")
    d1 = parse_when(end, "end")[1] if end is not None else None
    direction = _direction(direction, start, end, d0, d1)
    sign = 1 if direction == "forward" else -1
    n_weeks = ds.sizes["week"]
    if end is not None:
        p1 = week_position(ds, end, "end")
        steps = (p1 - p0) * sign
        if cyclic:
            steps %= n_weeks
            if steps == 0 and d0 is not None and d1 is not None and abs((d1 - d0).days) > 180:
                steps = n_weeks
        elif steps < 0:
            raise ConfigError(f"start={start}, end={end}: a truncated model cannot go {direction} "
                              f"from week {int(ds['week'][p0])} to week {int(ds['week'][p1])}; "
                              f"swap them or use direction={'backward' if sign > 0 else 'forward'}")
    else:
        steps = int(n_steps if n_steps is not None else 0)
        if steps < 0:
            raise ConfigError(f"n_steps={n_steps}: the number of weekly steps must be >= 0")
    positions = p0 + sign * np.arange(steps + 1)
    if not cyclic and (positions.max() >= n_weeks or positions.min() < 0):
        weeks = ds["week"].values
        raise ConfigError(f"{steps} steps {direction} from S&T week {int(weeks[p0])} run past the "
                          f"model's weeks {int(weeks[0])}..{int(weeks[-1])} (truncated model); "
                          "use fewer steps or an end inside them")
    positions = positions % n_weeks
    n_transitions = n_weeks if cyclic else n_weeks - 1
    trans = positions[:-1] if sign > 0 else positions[1:]
    trans = trans % n_transitions
    data_dates = pd.DatetimeIndex(ds["date"].values)
    first = data_dates[p0]
    if d0 is not None:  # the start week's centre in the year of the given date
        first = first + pd.DateOffset(years=d0.year - first.year)
        if abs((first - d0).days) > 183:
            first = first + pd.DateOffset(years=int(np.sign((d0 - first).days)))
    dates = increasing_dates([first, *data_dates[positions[1:]]], direction=sign)
    return Timeline(positions=positions, transitions=trans, dates=dates,
                    weeks=ds["week"].values[positions], direction=direction)
