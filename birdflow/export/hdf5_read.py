"""Read a fitted BirdFlowR v3 HDF5 file into a :class:`BirdFlowModel`.

Accepts the BirdFlowPy layout (``marginals/Week{t}_to_{t+1}``, 53 columns for cyclic models)
and the R re-exported one (``marginals/M_01-02`` … plus ``marginals/index``, 52 columns).
Stored ``distr`` values are kept bit for bit; metadata that the model cannot derive is kept
as JSON in the BirdFlowData attribute ``birdflowr_metadata`` so that re-export reproduces it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS
from pyproj.exceptions import CRSError

from birdflow.data.bfdata import validate_bfdata
from birdflow.data.grid import distance_matrix_km, to_lonlat
from birdflow.data.weeks import date_to_week
from birdflow.errors import DataError
from birdflow.export.birdflowr import (
    FITTED_PATHS,
    FORMAT_VERSION,
    GEOM_EXT_ATTR,
    GEOM_RES_ATTR,
    METADATA_ATTR,
    REQUIRED_PATHS,
    SPECIES_FIELDS,
    encode_entry,
    grid_centres,
    scalar,
)
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.markov import WeekIndex

_PY_NAME = re.compile(r"^Week(\d+)_to_(\d+)$")
_R_NAME = re.compile(r"^M_(\d+)-(\d+)$")


def import_birdflowr(path: str | os.PathLike) -> BirdFlowModel:
    """Read a fitted BirdFlowR v3 HDF5 model.

    Returns:
        BirdFlowModel with BirdFlowData (distr/dynamic_mask as (T, n_cells), grid from
        ``geom/ext``/``geom/res``, CRS from ``geom/crs``), marginals (n_transitions, n_max,
        n_max) in slot layout, the file's hyperparameters and loss_values.

    Raises:
        DataError: not HDF5, version 1 or 2, a missing group/dataset, unfitted, or shapes that
            disagree (each message names the path inside the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass a BirdFlowR .hdf5 model file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not an HDF5 file ({e}); pass a BirdFlowR .hdf5 model") from e
    with f:
        _check_structure(f, path)
        dates = _read_dates(f, path)
        n_weeks = len(dates)
        distr = _week_columns(f, "distr", n_weeks, path)
        dm = _week_columns(f, "geom/dynamic_mask", n_weeks, path) != 0
        if not np.array_equal(dm, distr > 0):
            raise DataError(f"{path}: /geom/dynamic_mask differs from /distr > 0; the file is "
                            "inconsistent - re-export it from BirdFlowR")
        marginal_list = _read_marginals(f, path, dm.sum(axis=1))
        cyclic = len(marginal_list) == n_weeks  # BirdFlowR: n_transitions == unique dates
        ds = _bfdata(f, path, distr, dm, dates, cyclic)
        index = WeekIndex.from_dynamic_mask(dm, cyclic)
        M = np.zeros((len(marginal_list), index.n_max, index.n_max))
        for t, m in enumerate(marginal_list):
            M[t, : m.shape[0], : m.shape[1]] = m
        hyper = {k: _python_value(v[()]) for k, v in f["metadata/hyperparameters"].items()}
        losses = {k: np.asarray(v[()], dtype=np.float64).ravel()
                  for k, v in f["metadata/loss_values"].items()}
    return BirdFlowModel(data=ds, index=index, marginals=M, hyperparameters=hyper,
                         loss_history=losses)


def _check_structure(f: h5py.File, path: Path) -> None:
    if "version" in f:
        raise DataError(f"{path}: root /version found - a version 1 BirdFlow file, which "
                        "neither BirdFlowR nor birdflow reads; refit the model from S&T data")
    if "metadata/birdflow_version" in f:
        version = scalar(f["metadata/birdflow_version"][()])
        if version != FORMAT_VERSION:
            raise DataError(f"{path}: /metadata/birdflow_version is {version}, only version "
                            f"{FORMAT_VERSION} (dynamic masks) is supported; re-preprocess the "
                            "species with a current BirdFlowR and refit")
    for key in REQUIRED_PATHS:
        if key not in f:
            raise DataError(f"{path}: missing /{key} - not a BirdFlowR model file")
    if "marginals" not in f:
        raise DataError(f"{path}: no /marginals - a preprocessed (unfitted) BirdFlowR file; "
                        "fit it (python -m birdflow.train) before importing")
    for key in FITTED_PATHS:
        if key not in f:
            raise DataError(f"{path}: missing /{key} - not a fitted BirdFlowR model file")


def _read_dates(f: h5py.File, path: Path) -> pd.DataFrame:
    """The /dates table without duplicated dates (the cyclic 53rd row): columns date, week."""
    table = f["dates"][()]
    if table.dtype.names is None:
        raise DataError(f"{path}: /dates is not a compound table; re-export it from BirdFlowR")
    cols = {re.sub("^week_", "", n): table[n] for n in table.dtype.names}
    if "date" not in cols:
        raise DataError(f"{path}: /dates has no 'date' column (has {list(cols)})")
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in cols["date"]]
    keep = ~pd.Series(text).duplicated().to_numpy()
    dates = pd.DatetimeIndex(pd.to_datetime(np.asarray(text)[keep]))
    week = cols["week"][keep].astype(np.int64) if "week" in cols else date_to_week(dates)
    return pd.DataFrame({"date": dates, "week": week})


def _week_columns(f: h5py.File, key: str, n_weeks: int, path: Path) -> np.ndarray:
    """(n_active, T[+1]) dataset -> (T, n_active); the duplicate week-1 column must match."""
    a = f[key][()]
    if a.ndim != 2 or a.shape[1] not in (n_weeks, n_weeks + 1):
        raise DataError(f"{path}: /{key} has shape {a.shape}, expected (n_active, {n_weeks}) or "
                        f"(n_active, {n_weeks + 1}) for the {n_weeks} weeks in /dates")
    if a.shape[1] == n_weeks + 1:
        if not np.array_equal(a[:, -1], a[:, 0]):
            raise DataError(f"{path}: /{key} column {n_weeks + 1} should repeat column 1 "
                            "exactly (cyclic duplicate) but differs")
        a = a[:, :n_weeks]
    return np.ascontiguousarray(a.T)


def _bfdata(f: h5py.File, path: Path, distr, dm, dates: pd.DataFrame, cyclic: bool) -> xr.Dataset:
    """BirdFlowData from the file's geometry, species and metadata (distr kept bit for bit)."""
    nrow, ncol = int(scalar(f["geom/nrow"][()])), int(scalar(f["geom/ncol"][()]))
    mask = f["geom/mask"][()]
    if mask.shape != (nrow, ncol):
        raise DataError(f"{path}: /geom/mask has shape {mask.shape} but /geom/nrow, /geom/ncol "
                        f"give ({nrow}, {ncol})")
    mask = mask == 1
    if distr.shape[1] != int(mask.sum()):
        raise DataError(f"{path}: /distr has {distr.shape[1]} rows but /geom/mask has "
                        f"{int(mask.sum())} active cells")
    res, ext = f["geom/res"][()].astype(float), f["geom/ext"][()].astype(float)
    if res.shape != (2,) or ext.shape != (4,):
        raise DataError(f"{path}: /geom/res and /geom/ext have shapes {res.shape}, {ext.shape}; "
                        "expected (2,) (xres, yres) and (4,) (xmin, xmax, ymin, ymax)")
    x, y = grid_centres(ext, res, ncol, nrow)
    wkt = scalar(f["geom/crs"][()])
    try:
        crs = CRS.from_wkt(wkt)
    except CRSError as e:
        raise DataError(f"{path}: /geom/crs is not a valid WKT CRS ({e})") from e
    rows, cols = np.nonzero(mask)
    lon, lat = to_lonlat(x[cols], y[rows], crs)
    n_weeks = len(dates)
    totals = np.full(n_weeks, np.nan)
    if "metadata/abundance/totals" in f:
        stored = np.asarray(f["metadata/abundance/totals"][()], dtype=np.float64).ravel()
        if stored.size in (n_weeks, n_weeks + 1):
            totals = stored[:n_weeks]
    ds = xr.Dataset(
        {
            "distr": (("week", "cell"), distr.astype(np.float64)),
            "dynamic_mask": (("week", "cell"), dm),
            "static_mask": (("y", "x"), mask),
            "cell_row": ("cell", rows.astype(np.int32)),
            "cell_col": ("cell", cols.astype(np.int32)),
            "cell_x": ("cell", x[cols]),
            "cell_y": ("cell", y[rows]),
            "cell_lon": ("cell", lon),
            "cell_lat": ("cell", lat),
            "distance_km": (("cell", "cell_to"), distance_matrix_km(lon, lat)),
            "totals": ("week", totals),
        },
        coords={"week": dates["week"].to_numpy(),
                "date": ("week", dates["date"].to_numpy().astype("datetime64[ns]")),
                "x": x, "y": y},
    )
    for name in ("uci", "lci"):
        if name in f and f[name].shape == f["distr"].shape:
            ds[name] = (("week", "cell"), _week_columns(f, name, n_weeks, path))
    ds = ds.rio.write_crs(wkt)
    year = scalar(f["metadata/ebird_version_year"][()])
    species = {name: scalar(f[f"species/{name}"][()]) for name in SPECIES_FIELDS}
    kept = {}
    f["metadata"].visititems(lambda key, obj: _keep(kept, key, obj))
    ds.attrs.update(
        species_code=str(species["species_code"]),
        version_year=int(year) if year != "" else int(dates["date"].iloc[0].year),
        res_km=round(float(res[0]) / 1000.0, 6),
        cyclic=int(cyclic),
        source=str(path),
        crs_wkt=wkt,
        **{k: v for k, v in species.items() if k != "species_code"},
    )
    ds.attrs[METADATA_ATTR] = json.dumps(kept)
    sparse = kept.get("sparse", {}).get("value", [""])
    if sparse and sparse[0]:  # a sparsified model: keep its stats where sparsify puts them
        ds.attrs["sparse"] = str(sparse[0])
    ds.attrs[GEOM_RES_ATTR], ds.attrs[GEOM_EXT_ATTR] = res, ext
    validate_bfdata(ds, str(path))
    return ds


def _keep(kept: dict, key: str, obj) -> None:
    if not isinstance(obj, h5py.Dataset) or key.split("/")[0] in ("hyperparameters",
                                                                 "loss_values"):
        return
    entry = encode_entry(obj)
    if entry is not None:
        kept[key] = entry


def _read_marginals(f: h5py.File, path: Path, counts: np.ndarray) -> list[np.ndarray]:
    group = f["marginals"]
    found = {}
    for name in group:
        m = _PY_NAME.match(name) or _R_NAME.match(name)
        if m:
            found[int(m.group(1))] = name
        elif name != "index":
            raise DataError(f"{path}: unexpected /marginals/{name}; expected Week{{t}}_to_{{t+1}}"
                            " or M_aa-bb names")
    n_weeks, nt = len(counts), len(found)
    if sorted(found) != list(range(1, nt + 1)) or nt not in (n_weeks, n_weeks - 1):
        raise DataError(f"{path}: /marginals holds transitions {sorted(found)}, expected 1..{n_weeks}"
                        f" (cyclic) or 1..{n_weeks - 1} (truncated) for {n_weeks} weeks")
    out = []
    for t in range(1, nt + 1):
        arr = group[found[t]][()]
        want = (int(counts[t - 1]), int(counts[t % n_weeks]))
        if arr.shape != want:
            raise DataError(f"{path}: /marginals/{found[t]} has shape {arr.shape} but the dynamic "
                            f"mask has {want[0]} cells in week {t} and {want[1]} in the next week")
        out.append(arr.astype(np.float64))
    return out


def _python_value(value):
    """HDF5 hyperparameter -> JSON-able Python value (bool, int, float, str or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    if arr.dtype.kind == "S":
        return [b.decode("utf-8") for b in arr.ravel()]
    return arr.ravel().tolist()
