"""Tracks CSV -> snapped rows -> intervals: validation messages and exclusion reasons."""

from __future__ import annotations

import numpy as np
import pytest

from birdflow.data.bfdata import make_bfdata
from birdflow.data.tracks import (
    EXCLUDE_REASONS,
    TrackRowWarning,
    load_tracks,
    make_intervals,
    read_tracks,
    snap_tracks,
)
from birdflow.data.weeks import week_dates
from birdflow.errors import DataError

# S&T distributions of the hand-made 3-week chain on a 2 x 2 grid whose south-east pixel is
# never occupied: active cells 0 = (row 0, col 0), 1 = (0, 1), 2 = (1, 0).
HAND_DISTR = np.array([[0.5, 0.3, 0.2],
                       [0.6, 0.4, 0.0],   # cell 2 is outside week 2's dynamic mask
                       [0.2, 0.3, 0.5]])
WEEK_DATE = {1: "2022-01-04", 2: "2022-01-11", 3: "2022-01-18"}  # S&T week centres


def hand_bfdata(weeks=(1, 2, 3), distr=HAND_DISTR):
    """BirdFlowData of a 2 x 2 grid (100 km pixels, 3 active cells) with the given distr rows."""
    distr = np.asarray(distr, dtype=float)
    cube = np.full((len(weeks), 2, 2), np.nan)
    cube[:, 0, 0], cube[:, 0, 1], cube[:, 1, 0] = distr[:, 0], distr[:, 1], distr[:, 2]
    dates = week_dates(2022)[np.asarray(weeks) - 1]
    return make_bfdata(cube, np.array([5e4, 15e4]), np.array([15e4, 5e4]), "ESRI:102008",
                       np.asarray(weeks), dates, species_code="hand", version_year=2022,
                       res_km=100.0, source="hand")


def cell_lonlat(ds, cell):
    return float(ds["cell_lon"].values[cell]), float(ds["cell_lat"].values[cell])


def inactive_lonlat():
    """Centre of the never-occupied south-east pixel (x = 150 km, y = 50 km)."""
    from birdflow.data.grid import to_lonlat

    lon, lat = to_lonlat(np.array([15e4]), np.array([5e4]), "ESRI:102008")
    return float(lon[0]), float(lat[0])


def write_csv(path, ds, rows, header="bird_id,date,lat,lon"):
    """rows: (bird, date, cell | (lon, lat)) -> CSV with cell centres as coordinates."""
    lines = [header]
    for bird, date, where in rows:
        lon, lat = where if isinstance(where, tuple) else cell_lonlat(ds, where)
        lines.append(f"{bird},{date},{lat!r},{lon!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def hand_rows(ds):
    """Tracks covering every exclusion reason on the hand grid (CSV lines 2..)."""
    w = WEEK_DATE
    return [
        ("A", w[1], 1), ("A", w[2], 0), ("A", w[3], 1),          # lines 2-4: two kept
        ("B", w[1], 0), ("B", w[3], 2),                            # 5-6: kept here
        ("C", w[1], 2), ("C", w[2], 2),                            # 7-8: dynamic_mask
        ("D", w[1], 0), ("D", "2022-01-05", 1),                    # 9-10: same_week
        ("E", w[1], (-60.0, 10.0)), ("E", w[2], 0),                # 11-12: outside grid
        ("F", w[1], inactive_lonlat()), ("F", w[2], 0),            # 13-14: inactive cell
        ("G", w[1], 0), ("G", "2022-03-01", 0),                    # 15-16: week 9, truncated
        ("H", w[1], 0), ("H", "2023-01-18", 1),                    # 17-18: too_long if capped
    ]


def test_exclusion_reasons_on_hand_grid(tmp_path):
    ds = hand_bfdata()
    path = write_csv(tmp_path / "t.csv", ds, hand_rows(ds))
    with pytest.warns(TrackRowWarning, match=r"line 11: point outside the model grid; "
                                             r"line 13: point on an inactive"):
        tracks = load_tracks(path, ds)
    iv = tracks.intervals.set_index("line1")
    assert iv["exclude"].to_dict() == {2: "", 3: "", 5: "", 7: "dynamic_mask", 9: "same_week",
                                       11: "not_active", 13: "not_active", 15: "truncated",
                                       17: ""}  # BirdFlowR: no day cap unless max_days is set
    assert iv.loc[2, ["cell1", "cell2", "week1", "week2", "t1", "t2", "lag"]].tolist() == \
        [1, 0, 1, 2, 0, 1, 1]
    assert iv.loc[5, "lag"] == 2
    assert iv.loc[2, "elapsed_days"] == 7
    # the points are the cell centres, so elapsed km is the stored centre-to-centre distance
    assert iv.loc[3, "elapsed_km"] == pytest.approx(float(ds["distance_km"].values[0, 1]))
    counts = tracks.excluded_counts()
    assert set(counts) == set(EXCLUDE_REASONS) and counts["not_active"] == 2
    capped = load_tracks(path, ds, warn=False, max_days=365).intervals.set_index("line1")
    assert capped.loc[17, "exclude"] == "too_long" and capped.loc[2, "exclude"] == ""


def test_truncated_lag_and_cyclic_wrap(tmp_path):
    ds = hand_bfdata()
    rows = [("A", "2022-01-18", 0), ("A", "2023-01-04", 1)]  # week 3 -> week 1: 351 days
    path = write_csv(tmp_path / "t.csv", ds, rows)
    iv = load_tracks(path, ds).intervals
    assert iv["exclude"].tolist() == ["truncated"] and iv["lag"].tolist() == [-1]
    full = hand_bfdata(weeks=range(1, 53), distr=np.tile(HAND_DISTR[0], (52, 1)))
    rows = [("W", "2022-12-13", 0), ("W", "2023-01-18", 2)]  # week 50 -> week 3
    iv = load_tracks(write_csv(tmp_path / "w.csv", full, rows), full).intervals
    assert iv[["week1", "week2", "t1", "t2", "lag"]].values.tolist() == [[50, 3, 49, 2, 5]]
    assert iv["exclude"].tolist() == [""]


def test_bad_rows_named_and_rest_kept(tmp_path):
    ds = hand_bfdata()
    lon0, lat0 = cell_lonlat(ds, 0)
    lon1, lat1 = cell_lonlat(ds, 1)
    text = ("bird_id,date,lat,lon,colour\n"
            f"A,2022-01-04,{lat0},{lon0},red\n"
            f"A,04/01/2022,{lat0},{lon0},red\n"     # line 3: not ISO, cannot be placed in time
            f"A,2022-01-11,{lat1},{lon1},red\n"
            f"B,2022-01-04,{lat0},200,blue\n"       # line 5: lon out of range
            f"B,2022-01-11,95.5,{lon0},blue\n"      # line 6: lat out of range
            f"B,2022-01-18,north,{lon0},blue\n"     # line 7: not a number
            f",2022-01-11,{lat1},{lon1},blue\n")    # line 8: no bird id
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.warns(TrackRowWarning) as rec:
        tracks = load_tracks(path, ds)
    msg = str(rec[0].message)
    assert msg.startswith(f"{path}: 5 of 7 rows left out")
    for needle in ("line 3: unparsable date '04/01/2022' (expected YYYY-MM-DD)",
                   "line 5: lon 200 outside [-180, 180]", "line 6: lat 95.5 outside [-90, 90]",
                   "line 7: lat 'north' is not a number", "line 8: empty bird_id"):
        assert needle in msg
    assert "\n" not in msg
    iv = tracks.intervals
    kept = iv[iv["exclude"] == ""]
    # the undated row cannot be ordered, so A's line 2 pairs with line 4 and is still scored
    assert kept[["line1", "line2", "cell1", "cell2"]].values.tolist() == [[2, 4, 0, 1]]
    assert iv.loc[iv["exclude"] == "bad_row", ["line1", "line2"]].values.tolist() == \
        [[5, 6], [6, 7]]


def test_missing_columns_and_missing_file(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("bird,date,latitude,lon\nA,2022-01-04,40,-100\n")
    with pytest.raises(DataError) as err:
        read_tracks(path)
    msg = str(err.value)
    assert str(path) in msg and "['bird_id', 'lat']" in msg and "'bird_id,date,lat,lon'" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="tracks CSV not found"):
        read_tracks(tmp_path / "nope.csv")


def test_window_filters(tmp_path):
    ds = hand_bfdata()
    rows = [("A", WEEK_DATE[1], 1), ("A", WEEK_DATE[2], 0), ("A", WEEK_DATE[3], 1)]
    snapped = snap_tracks(read_tracks(write_csv(tmp_path / "t.csv", ds, rows)), ds)
    assert make_intervals(snapped, ds)["exclude"].tolist() == ["", ""]
    assert make_intervals(snapped, ds, min_days=8)["exclude"].tolist() == ["filtered"] * 2
    assert make_intervals(snapped, ds, max_km=50)["exclude"].tolist() == ["filtered"] * 2
    assert make_intervals(snapped, ds, min_km=50, max_days=7)["exclude"].tolist() == ["", ""]


def test_multi_year_intervals_are_scored_on_the_cyclic_year(tmp_path):
    full = hand_bfdata(weeks=range(1, 53), distr=np.tile(HAND_DISTR[0], (52, 1)))
    rows = [("R", "2022-06-18", 0), ("R", "2025-07-23", 1),   # week 25 -> week 30, 3 years on
            ("S", "2022-06-18", 0), ("S", "2024-06-18", 0),   # same week 2 years on: one cycle
            ("T", "2022-12-28", 1), ("T", "2023-01-04", 2),   # across new year, 7 days
            ("U", "2022-12-28", 1), ("U", "2027-01-04", 2)]   # the same weeks, 4 years later
    iv = load_tracks(write_csv(tmp_path / "m.csv", full, rows), full).intervals.set_index("bird_id")
    assert iv["lag"].to_dict() == {"R": 5, "S": 52, "T": 1, "U": 1}
    assert iv["wrapped_years"].to_dict() == {"R": 3, "S": 1, "T": 0, "U": 4}
    assert (iv["exclude"] == "").all() and iv.loc["R", "elapsed_days"] == 1131
