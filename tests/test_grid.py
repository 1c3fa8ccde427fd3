"""Grid geometry: great-circle distances, projections, point -> cell snapping, week calendar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from birdflow.data.grid import (
    EARTH_RADIUS_KM,
    from_lonlat,
    great_circle_km,
    snap_to_cells,
    to_lonlat,
)
from birdflow.data.weeks import date_to_week, week_dates


def test_great_circle_quarter_meridian():
    # pole to equator along a meridian is a quarter of the circumference
    assert great_circle_km(0, 0, 0, 90) == pytest.approx(np.pi * EARTH_RADIUS_KM / 2)
    assert great_circle_km(10, 20, 10, 20) == 0


def test_lonlat_round_trip_in_equal_area_crs():
    crs = "+proj=laea +lat_0=30 +lon_0=-95 +x_0=5500000 +y_0=9500000 +datum=WGS84 +units=m"
    lon, lat = np.array([-100.0, -80.5]), np.array([25.0, 45.2])
    x, y = from_lonlat(lon, lat, crs)
    np.testing.assert_allclose(to_lonlat(x, y, crs), (lon, lat), atol=1e-9)


def test_snap_to_cells_row_major_edges_and_outside():
    x_c, y_c = np.array([50.0, 150.0, 250.0]), np.array([150.0, 50.0])  # 2 x 3 grid, res 100
    mask = np.array([[True, False, True], [True, True, True]])
    # cell ids: (0,0)=0 (0,2)=1 (1,0)=2 (1,1)=3 (1,2)=4; (0,1) inactive
    pts_x = [10, 120, 299.99, 300.0, 0.0, -5, 50]
    pts_y = [190, 190, 190, 0.0, 100.0, 50, 250]
    np.testing.assert_array_equal(snap_to_cells(pts_x, pts_y, x_c, y_c, mask), [0, -1, 1, 4, 2, -1, -1])


def test_snap_to_cells_edge_tolerance_is_absolute_metres_at_real_coordinates():
    """At 10^7 m coordinates a relative tolerance would take points ~100 m beyond the east
    and south edges into the grid; only round-off (1 mm) counts as on the edge."""
    res = 100_000.0
    x_c = 9.5e6 + res / 2 + res * np.arange(3)  # east edge at 9.8e6 m
    y_c = 1.2e7 - res / 2 - res * np.arange(2)  # south edge at 1.18e7 m
    mask = np.ones((2, 3), bool)
    east, south = 9.8e6, 1.18e7
    pts_x = [east, east + 1e-4, east + 50.0, east + 90.0, 9.6e6, 9.6e6, 9.6e6]
    pts_y = [1.195e7, 1.195e7, 1.195e7, 1.195e7, south, south - 1e-4, south - 50.0]
    np.testing.assert_array_equal(snap_to_cells(pts_x, pts_y, x_c, y_c, mask),
                                  [2, 2, -1, -1, 4, 4, -1])


def test_snap_to_cells_one_row_grid():
    cells = snap_to_cells([50, 150, 250, -1], [0, 0, 0, 0], np.array([50.0, 150, 250]), np.array([0.0]),
                          np.ones((1, 3), bool))
    np.testing.assert_array_equal(cells, [0, 1, 2, -1])


def test_week_calendar():
    dates = week_dates(2022)
    assert len(dates) == 52 and dates[0] == pd.Timestamp("2022-01-04") and dates[-1] == pd.Timestamp("2022-12-27")
    np.testing.assert_array_equal(date_to_week(dates), np.arange(1, 53))
    np.testing.assert_array_equal(date_to_week(["2021-01-01", "2021-01-07", "2021-01-08", "2024-12-31"]),
                                  [1, 1, 2, 52])
