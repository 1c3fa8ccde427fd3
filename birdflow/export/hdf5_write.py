"""Write a fitted :class:`BirdFlowModel` as a BirdFlowR v3 HDF5 file (BirdFlowPy layout).

The file is what ``BirdFlowR::import_birdflow()`` reads: ``distr``/``dynamic_mask`` as
(n_active, T) matrices, with a 53rd column repeating week 1 for cyclic models;
``marginals/Week{t}_to_{t+1}`` as float32 (n_t, n_{t+1}) joints, rows = from-cell, both in
dmi (cell) order; geometry, species, dates and metadata as in ``sstspa_model.hdf5``. A
neighbourhood-sparse model is written dense too, one densified week at a time (peak memory one
week's (n_t, n_{t+1}) joint).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from birdflow.errors import DataError
from birdflow.export.birdflowr import (
    DERIVED_METADATA,
    FORMAT_VERSION,
    GEOM_EXT_ATTR,
    GEOM_RES_ATTR,
    LOSS_COLUMNS,
    SPECIES_FIELDS,
    TIMESTEP_PADDING,
    decode_entry,
    default_filename,
    fixed_strings,
    grid_centres,
    kept_metadata,
    write_r_dataset,
)
from birdflow.io import atomic_hdf5
from birdflow.model.fitted import BirdFlowModel

# real-valued in BirdFlowPy files even when a config gives an integer (obs_weight: 1)
FLOAT_HYPERPARAMETERS = ("obs_weight", "ent_weight", "dist_weight", "dist_pow", "learning_rate")


def export_birdflowr(model: BirdFlowModel, path: str | os.PathLike | None = None, *,
                     run_dir: str | os.PathLike | None = None) -> Path:
    """Write ``model`` as a BirdFlowR v3 HDF5 file, atomically.

    Args:
        model: fitted model (marginals in the WeekIndex slot layout, cells in dmi order).
        path: output file; a directory (existing, or ending in "/") or None puts
            :func:`default_filename` there.
        run_dir: where a None ``path`` puts the file (default: the current directory).

    Returns:
        The path written.

    Raises:
        DataError: the model's slot layout disagrees with its dynamic masks, or its loss
            traces have different lengths.
        ConfigError: no path given and a naming hyperparameter is missing.
    """
    as_dir = path is None or str(path).endswith(("/", os.sep)) or Path(path).is_dir()
    path = Path(run_dir if run_dir is not None else Path.cwd()) if path is None else Path(path)
    if as_dir:
        path = path / default_filename(model)
    _check_layout(model)
    nbytes = int(model.marginals.size) * 8 + int(model.data["distr"].size) * 8 * 3
    with atomic_hdf5(path, nbytes) as target, h5py.File(target, "w") as f:
        _write_data(f, model)
        _write_geom(f, model)
        _write_species(f, model.data.attrs)
        _write_metadata(f, model)
        for t in range(model.n_transitions):
            f.create_dataset(f"marginals/Week{t + 1}_to_{t + 2}",
                             data=np.ascontiguousarray(model.marginal_at(t), dtype=np.float32))
    return path


def _check_layout(model: BirdFlowModel) -> None:
    dm = model.data["dynamic_mask"].values
    for t in range(model.index.n_weeks):
        cells = np.flatnonzero(dm[t])
        slots = model.index.slot_cell[t]
        if not np.array_equal(slots[slots >= 0], cells):
            raise DataError(f"model week {t + 1}: slot layout differs from the dynamic mask "
                            f"({int((slots >= 0).sum())} slots, {cells.size} cells); rebuild the "
                            "WeekIndex with WeekIndex.from_bfdata(model.data)")


def _columns(per_week: np.ndarray, cyclic: bool) -> np.ndarray:
    """(T, n_cells) -> (n_cells, T[+1]); cyclic models repeat week 1 as the last column."""
    out = np.asarray(per_week).T
    return np.ascontiguousarray(np.concatenate([out, out[:, :1]], axis=1) if cyclic else out)


def _write_data(f: h5py.File, model: BirdFlowModel) -> None:
    ds, cyclic = model.data, model.cyclic
    write_r_dataset(f, "distr", _columns(ds["distr"].values.astype(np.float64), cyclic))
    for name in ("uci", "lci"):
        if name in ds:
            write_r_dataset(f, name, _columns(ds[name].values.astype(np.float64), cyclic))
    write_r_dataset(f, "transitions", np.array([-128]), logical=True)  # NA placeholder

    dates = pd.DatetimeIndex(ds["date"].values)
    weeks = ds["week"].values.astype(np.int32)
    order = list(range(len(weeks))) + ([0] if cyclic else [])
    date_txt = fixed_strings([f"{dates[i]:%Y-%m-%d}" for i in order])
    label_txt = fixed_strings([f"{dates[i]:%B} {dates[i].day}" for i in order])
    table = np.zeros(len(order), dtype=[("timestep", "<f8"), ("date", date_txt.dtype),
                                        ("label", label_txt.dtype), ("julian", "<f8"),
                                        ("week", "<i4")])
    table["timestep"] = np.arange(1, len(order) + 1)
    table["date"], table["label"] = date_txt, label_txt
    table["julian"] = [dates[i].day_of_year for i in order]
    table["week"] = weeks[order]
    write_r_dataset(f, "dates", table)


def _write_geom(f: h5py.File, model: BirdFlowModel) -> None:
    ds = model.data
    g = f.create_group("geom")
    x, y = ds["x"].values.astype(float), ds["y"].values.astype(float)
    fallback = float(ds.attrs.get("res_km", 0.0)) * 1000.0
    xres = (x.max() - x.min()) / (len(x) - 1) if len(x) > 1 else fallback
    yres = (y.max() - y.min()) / (len(y) - 1) if len(y) > 1 else fallback
    write_r_dataset(g, "nrow", np.array([len(y)], dtype=np.float64))
    write_r_dataset(g, "ncol", np.array([len(x)], dtype=np.float64))
    res = np.array([xres, yres])
    ext = np.array([x.min() - xres / 2, x.max() + xres / 2, y.min() - yres / 2, y.max() + yres / 2])
    kept_res, kept_ext = ds.attrs.get(GEOM_RES_ATTR), ds.attrs.get(GEOM_EXT_ATTR)
    if kept_res is not None and kept_ext is not None and all(
            np.array_equal(a, b) for a, b in zip(grid_centres(kept_ext, kept_res, len(x), len(y)),
                                                 (x, y), strict=True)):
        res, ext = np.asarray(kept_res, float), np.asarray(kept_ext, float)  # imported, bit-exact
    write_r_dataset(g, "res", res)
    write_r_dataset(g, "ext", ext)
    wkt = ds.attrs.get("crs_wkt") or ds.rio.crs.to_wkt()
    write_r_dataset(g, "crs", fixed_strings([wkt]))
    write_r_dataset(g, "mask", ds["static_mask"].values, logical=True)
    write_r_dataset(g, "dynamic_mask", _columns(ds["dynamic_mask"].values, model.cyclic),
                    logical=True)


def _write_species(f: h5py.File, attrs: dict) -> None:
    g = f.create_group("species")
    for name in SPECIES_FIELDS:
        value = attrs.get(name)
        if name.endswith("_quality"):
            num = np.nan if value is None or value == "" else float(value)
            write_r_dataset(g, name, np.array([num]))
        else:
            write_r_dataset(g, name, fixed_strings(["" if value is None else str(value)]))


def _metadata_entries(model: BirdFlowModel) -> dict:
    """Metadata key -> (value, logical); kept JSON first, then what the model determines."""
    ds = model.data
    n_weeks = model.index.n_weeks
    entries = {
        "birdflow_model_date": (str(dt.datetime.now()), False),
        "birdflow_preprocess_date": (fixed_strings([f"{dt.date.today():%Y-%m-%d}"]), False),
        "birdflowr_version": (fixed_strings([""]), False),
        "birdflowr_preprocess_version": (fixed_strings([""]), False),
        "ebird_version_year": (np.array([float(ds.attrs.get("version_year", np.nan))]), False),
        "ebird_release_year": (fixed_strings([""]), False),  # "" = NA for BirdFlowR
        "ebird_access_end_date": (fixed_strings([""]), False),
        "ebirdst_version": (fixed_strings([""]), False),
        "has_marginals": (np.array([0]), True),  # BirdFlowPy leaves it FALSE; R sets it
        "sparse": (fixed_strings([""]), False),
    }
    totals = ds["totals"].values
    if np.all(np.isfinite(totals)):
        cyc = np.concatenate([totals, totals[:1]]) if model.cyclic else totals
        entries["abundance/totals"] = (cyc.astype(np.float64), False)
    for key, entry in kept_metadata(ds.attrs).items():
        if key not in DERIVED_METADATA:
            entries[key] = (decode_entry(entry), bool(entry.get("logical", False)))
    if ds.attrs.get("sparse"):  # sparsified here (birdflow.model.sparsify): its stats as JSON
        entries["sparse"] = (fixed_strings([str(ds.attrs["sparse"])]), False)
    sparse_txt = np.asarray(entries["sparse"][0]).ravel()
    is_sparse = bool(sparse_txt.size and sparse_txt[0] not in (b"", ""))
    derived = {
        "birdflow_version": (np.array([float(FORMAT_VERSION)]), False),
        "n_active": (np.array([model.n_cells], dtype=np.int32), False),
        "n_timesteps": (np.array([n_weeks], dtype=np.int32), False),
        "n_transitions": (np.array([model.n_transitions], dtype=np.int32), False),
        "timestep_padding": (np.array([TIMESTEP_PADDING], dtype=np.int32), False),
        "has_distr": (np.array([1]), True),
        "has_transitions": (np.array([0]), True),
        "is_sparse": (np.array([int(is_sparse)]), True),
    }
    entries.update(derived)
    return entries


def _write_metadata(f: h5py.File, model: BirdFlowModel) -> None:
    g = f.create_group("metadata")
    for key, (value, logical) in _metadata_entries(model).items():
        if isinstance(value, str):  # written by Python: variable-length scalar string
            g.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))
        else:
            write_r_dataset(g, key, value, logical=logical)

    hp = g.create_group("hyperparameters")
    params = {"normalized": True, **model.hyperparameters}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        if isinstance(value, str):
            hp.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))
        elif isinstance(value, bool | np.bool_):
            hp.create_dataset(key, data=np.bool_(value))
        elif isinstance(value, int | np.integer) and key not in FLOAT_HYPERPARAMETERS:
            hp.create_dataset(key, data=np.int64(value))
        else:
            hp.create_dataset(key, data=np.asarray(value, dtype=np.float64))

    losses = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in model.loss_history.items()}
    lengths = {k: v.size for k, v in losses.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"model loss_history columns have different lengths {lengths}; "
                        "BirdFlowR reads loss_values as one data frame - trim them to one length")
    n_steps = max([1, *lengths.values()])
    lv = g.create_group("loss_values")
    for key in LOSS_COLUMNS:
        lv.create_dataset(key, data=losses.pop(key, np.full(n_steps, np.nan)))
    for key, values in losses.items():
        lv.create_dataset(key, data=values)
