"""Map furniture without a network: Natural Earth countries, graticule, cell rasters, palettes.

Country borders and coastlines come from the Natural Earth 1:110m layer shipped in
``birdflow/resources/naturalearth`` (public domain), clipped around the model grid in
lon/lat and reprojected to the model CRS. Cells are drawn as a raster on the model grid:
the (y, x) image is rebuilt from ``cell_row``/``cell_col`` and cells outside the static or
dynamic mask are NaN, which the colour maps draw transparent.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import LinearSegmentedColormap
from shapely.geometry import box

from birdflow.data.grid import from_lonlat, to_lonlat

LAND_COLOUR = "#eeeeea"
SEA_COLOUR = "#dfe9f2"
BORDER_COLOUR = "#6b6b6b"
# Cyclic season palette, one turn a year: winter blue -> spring green -> summer yellow ->
# fall red -> winter blue (anchors at Jan 15, Apr 15, Jul 15, Oct 15 as fractions of the year).
SEASON_CMAP = LinearSegmentedColormap.from_list(
    "birdflow_seasons",
    [(0.0, "#2c5fa8"), (0.04, "#2c5fa8"), (0.29, "#3a9a45"), (0.54, "#e8c21b"),
     (0.79, "#c8352b"), (1.0, "#2c5fa8")],
)


@lru_cache(maxsize=1)
def load_countries() -> gpd.GeoDataFrame:
    """The shipped Natural Earth 1:110m countries (EPSG:4326, 177 polygons)."""
    shp = resources.files("birdflow") / "resources" / "naturalearth" / "naturalearth_lowres.shp"
    with resources.as_file(shp) as path:
        return gpd.read_file(path)


def grid_extent(data: xr.Dataset) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of the model grid in metres of its CRS."""
    x, y = data["x"].values, data["y"].values
    dx = abs(float(x[1] - x[0])) if len(x) > 1 else float(data.attrs.get("res_km", 100)) * 1e3
    dy = abs(float(y[0] - y[1])) if len(y) > 1 else dx
    return float(x.min() - dx / 2), float(x.max() + dx / 2), float(y.min() - dy / 2), float(y.max() + dy / 2)


def panel_width(data: xr.Dataset, height: float) -> float:
    """Width in inches of a map panel ``height`` inches tall (grid aspect, kept in 0.5..2.5)."""
    left, right, bottom, top = grid_extent(data)
    return height * float(np.clip((right - left) / (top - bottom), 0.5, 2.5))


def _frame_lonlat(crs, extent, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of a dense ring around the padded extent (the grid's outline on the globe)."""
    left, right, bottom, top = extent
    w, h = right - left, top - bottom
    left, right, bottom, top = left - pad * w, right + pad * w, bottom - pad * h, top + pad * h
    s = np.linspace(0.0, 1.0, 41)
    xs = np.r_[left + s * (right - left), np.full_like(s, right), right - s * (right - left), np.full_like(s, left)]
    ys = np.r_[np.full_like(s, bottom), bottom + s * (top - bottom), np.full_like(s, top), top - s * (top - bottom)]
    return to_lonlat(xs, ys, crs)


def countries_for(data: xr.Dataset, pad: float = 0.5) -> gpd.GeoDataFrame:
    """Countries clipped (in lon/lat) to the grid's surroundings and reprojected to its CRS.

    Clipping first keeps far-away (e.g. antipodal) polygons from being torn by the projection.
    """
    return _countries_for(data.rio.crs.to_wkt(), grid_extent(data), pad)


@lru_cache(maxsize=8)
def _countries_for(crs_wkt: str, extent: tuple, pad: float) -> gpd.GeoDataFrame:
    lon, lat = _frame_lonlat(crs_wkt, extent, pad)
    ok = np.isfinite(lon) & np.isfinite(lat)
    lon_min, lon_max = max(lon[ok].min() - 5, -180), min(lon[ok].max() + 5, 180)
    lat_min, lat_max = max(lat[ok].min() - 5, -90), min(lat[ok].max() + 5, 90)
    world = load_countries()
    clipped = world.clip(box(lon_min, lat_min, lon_max, lat_max))
    clipped = clipped[~clipped.geometry.is_empty]
    return clipped.to_crs(crs_wkt)


def draw_basemap(ax, data: xr.Dataset, zorder: float = 0) -> None:
    """Sea background, land fill and country borders/coastlines under the cells."""
    ax.set_facecolor(SEA_COLOUR)
    countries = countries_for(data)
    if len(countries):
        countries.plot(ax=ax, color=LAND_COLOUR, edgecolor=BORDER_COLOUR, linewidth=0.6, zorder=zorder)


def draw_borders(ax, data: xr.Dataset, zorder: float = 3) -> list:
    """Borders and coastlines only (drawn on top of the cells); returns the new artists."""
    countries = countries_for(data)
    before = len(ax.collections)
    if len(countries):
        countries.boundary.plot(ax=ax, color=BORDER_COLOUR, linewidth=0.5, zorder=zorder)
    return list(ax.collections[before:])


def _crossings(a: np.ndarray, b: np.ndarray, level: float) -> list[float]:
    """Values of ``a`` where the polyline (a, b) crosses b == level (linear interpolation)."""
    s = np.sign(b - level)
    idx = np.flatnonzero((s[:-1] * s[1:] < 0) & np.isfinite(a[:-1]) & np.isfinite(a[1:]))
    return [float(a[i] + (level - b[i]) * (a[i + 1] - a[i]) / (b[i + 1] - b[i])) for i in idx]


def draw_graticule(ax, data: xr.Dataset, step: float | None = None, labels: bool = True,
                   pad: float = 0.04) -> None:
    """Meridians and parallels every ``step`` degrees, labelled where they meet the frame.

    Also sets the view: the grid extent plus ``pad`` (fraction of its size) on each side.
    """
    left, right, bottom, top = grid_extent(data)
    w, h = right - left, top - bottom
    left, right, bottom, top = extent = (left - pad * w, right + pad * w, bottom - pad * h, top + pad * h)
    lon, lat = _frame_lonlat(data.rio.crs, extent, 0.0)
    if step is None:
        span = max(np.ptp(lon[np.isfinite(lon)]), np.ptp(lat[np.isfinite(lat)]))
        step = next(s for s in (2, 5, 10, 15, 20, 30) if span / s <= 5)
    crs = data.rio.crs
    dense = np.linspace(-89.5, 89.5, 720)
    xticks, yticks = [], []
    for m in np.arange(np.floor(lon.min() / step) * step, lon.max() + step, step):
        x, y = from_lonlat(np.full_like(dense, m), dense, crs)
        ax.plot(x, y, color="#999999", lw=0.4, ls=":", zorder=2.5)
        xticks += [(v, _deg(m, "EW")) for v in _crossings(x, y, bottom) if left <= v <= right]
    for p in np.arange(np.floor(lat.min() / step) * step, lat.max() + step, step):
        around = np.linspace(-180, 180, 1441)
        x, y = from_lonlat(around, np.full_like(around, p), crs)
        ax.plot(x, y, color="#999999", lw=0.4, ls=":", zorder=2.5)
        yticks += [(v, _deg(p, "NS")) for v in _crossings(y, x, left) if bottom <= v <= top]
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_xticks([v for v, _ in xticks], [s for _, s in xticks] if labels else [])
    ax.set_yticks([v for v, _ in yticks], [s for _, s in yticks] if labels else [])
    ax.tick_params(labelsize=7, length=2)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_aspect("equal")


def _deg(v: float, hemis: str) -> str:
    v = float(v)
    return f"{abs(v):g}°{hemis[0] if v > 0 else hemis[1] if v < 0 else ''}"


def distr_image(data: xr.Dataset, values: np.ndarray, week_pos: int | None = None) -> np.ndarray:
    """(n_cells,) values -> (ny, nx) image; NaN off the static mask (and off week's dynamic mask)."""
    img = np.full(data["static_mask"].shape, np.nan)
    vals = np.asarray(values, dtype=float).copy()
    if week_pos is not None:
        vals[~data["dynamic_mask"].values[week_pos]] = np.nan
    img[data["cell_row"].values, data["cell_col"].values] = vals
    return img


def season_colour_values(dates) -> np.ndarray:
    """Fraction of the year (0..1) of each date: the input of :data:`SEASON_CMAP`."""
    idx = pd.DatetimeIndex(pd.to_datetime(dates))
    return ((np.asarray(idx.day_of_year, dtype=float) - 1) / 365.0) % 1.0
