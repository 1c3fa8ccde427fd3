"""CF conventions for the NetCDF files (``data.nc``, ``model.nc``): attributes and map views.

Our datasets keep distributions on a 1-D ``cell`` dimension (active cells only), which GIS
tools cannot draw. :func:`to_cf` returns a copy for writing with

* global ``Conventions = "CF-1.8"`` and a ``title``;
* ``units`` and ``long_name`` on every variable, ``standard_name`` where CF has one
  (projection_x/y_coordinate, longitude, latitude, time);
* each (week, cell) distribution also as a (week, y, x) map ``<name>_map`` (NaN outside the
  active cells) with ``grid_mapping = "spatial_ref"``, the CRS variable rioxarray writes
  (``crs_wkt`` / ``spatial_ref`` attributes), so xarray/rioxarray, QGIS, GDAL and R's terra
  open them as georeferenced rasters with one band per week.

:func:`from_cf` undoes it after reading, so a file round-trips to the identical dataset.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

CONVENTIONS = "CF-1.8"
GRID_MAPPING = "spatial_ref"
MAP_SUFFIX = "_map"
# (units, long_name[, standard_name]) per variable
VARIABLE_ATTRS = {
    "distr": ("1", "S&T relative abundance of the week, normalised to sum to 1 over cells"),
    "uci": ("1", "upper confidence bound of the abundance, divided by the week's total"),
    "lci": ("1", "lower confidence bound of the abundance, divided by the week's total"),
    "mu": ("1", "model distribution of the week (sums to 1 over cells)"),
    "dynamic_mask": ("1", "cell takes part in the week (1) or not (0)"),
    "static_mask": ("1", "active cell (1) or not (0)"),
    "cell_row": ("1", "grid row of the active cell (0 = north)"),
    "cell_col": ("1", "grid column of the active cell (0 = west)"),
    "cell_x": ("m", "projected x of the active cell centre", "projection_x_coordinate"),
    "cell_y": ("m", "projected y of the active cell centre", "projection_y_coordinate"),
    "cell_lon": ("degrees_east", "longitude of the active cell centre", "longitude"),
    "cell_lat": ("degrees_north", "latitude of the active cell centre", "latitude"),
    "distance_km": ("km", "great-circle distance between active cell centres"),
    "totals": ("1", "sum of the raw S&T abundance of the week (the normalising divisor)"),
    "percent_lost": ("percent", "abundance removed by the clip polygon"),
    "marginals": ("1", "joint probability of (cell at week t, cell at week t + 1), slot layout"),
    "slot_cell": ("1", "active cell of each slot of the week (-1 = padding)"),
    "week": ("1", "eBird Status & Trends week number (1..52)"),
    "x": ("m", "x of the grid column centre", "projection_x_coordinate"),
    "y": ("m", "y of the grid row centre", "projection_y_coordinate"),
}
AXES = {"x": "X", "y": "Y"}


def cell_to_grid(ds: xr.Dataset, values: np.ndarray) -> np.ndarray:
    """(..., n_cells) values on active cells -> (..., nrow, ncol) with NaN elsewhere."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full((*values.shape[:-1], ds.sizes["y"], ds.sizes["x"]), np.nan)
    out[..., ds["cell_row"].values, ds["cell_col"].values] = values
    return out


def _attrs(name: str) -> dict:
    spec = VARIABLE_ATTRS.get(name)
    if spec is None:
        return {}
    out = {"units": spec[0], "long_name": spec[1]}
    if len(spec) > 2:
        out["standard_name"] = spec[2]
    if name in AXES:
        out["axis"] = AXES[name]
    return out


def to_cf(ds: xr.Dataset, maps: dict[str, str] | None = None, title: str = "") -> xr.Dataset:
    """A copy of ``ds`` with CF attributes and (week, y, x) maps of distributions.

    Args:
        ds: a dataset with ``x``, ``y`` coordinates, the rioxarray CRS variable and, for the
            maps, ``cell_row``/``cell_col`` (a BirdFlowData) - or ``grid`` given separately.
        maps: {(week, cell) variable: map variable name}; default ``distr`` -> ``distr_map``.
        title: the global ``title``.
    """
    out = ds.copy()
    for name in list(out.variables):
        attrs = _attrs(str(name))
        if attrs and name != GRID_MAPPING:
            out[name].attrs.update({k: v for k, v in attrs.items() if k not in out[name].attrs})
    maps = {"distr": "distr" + MAP_SUFFIX} if maps is None else maps
    for src, dst in maps.items():
        if src not in out:
            continue
        grid = cell_to_grid(out, out[src].values)
        units, long_name = VARIABLE_ATTRS.get(src, ("1", src))[:2]
        out[dst] = (("week", "y", "x"), grid)
        out[dst].attrs = {"units": units, "long_name": long_name + " (map; NaN = inactive cell)",
                          "grid_mapping": GRID_MAPPING}
    out["date"].attrs.setdefault("standard_name", "time")
    out["date"].attrs.setdefault("long_name", "centre date of the S&T week")
    out.attrs["Conventions"] = CONVENTIONS
    out.attrs["title"] = title or "birdflow dataset"
    return out


def from_cf(ds: xr.Dataset) -> xr.Dataset:
    """Inverse of :func:`to_cf`: drop the maps and the attributes it added."""
    out = ds.drop_vars([v for v in ds.data_vars if str(v).endswith(MAP_SUFFIX)])
    for name in list(out.variables):
        for key, value in _attrs(str(name)).items():
            if out[name].attrs.get(key) == value:
                del out[name].attrs[key]
    for key in ("standard_name", "long_name"):
        out["date"].attrs.pop(key, None)
    if out.attrs.get("Conventions") == CONVENTIONS:
        del out.attrs["Conventions"]
        out.attrs.pop("title", None)
    return out
