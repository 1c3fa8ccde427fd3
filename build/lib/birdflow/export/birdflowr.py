"""The BirdFlowR v3 HDF5 model format: paths, storage conventions and file naming.

Shared by :mod:`birdflow.export.hdf5_write` and :mod:`birdflow.export.hdf5_read`. The layout
is the one of a BirdFlowPy-fitted file (``sstspa_model.hdf5``; see
``docs/birdflow_reference.md`` §2): R-written datasets are one-dimensional or matrices,
gzip-6 with attribute ``rhdf5-NA.OK``; logicals are ``int8`` (NA = -128) with attribute
``storage.mode = "logical"``; strings are fixed-length, NULL-padded ASCII/UTF-8 bytes whose
width is the longest value (at least 1; ``""`` stands for NA). Python-written parts
(``marginals``, ``metadata/hyperparameters``, ``metadata/loss_values``,
``metadata/birdflow_model_date``) are plain, uncompressed datasets.

Metadata we do not derive from the model (package versions, S&T release year, dates …) is
kept between import and export as JSON in the BirdFlowData attribute ``birdflowr_metadata``:
``{"key/path": {"dtype": numpy dtype string or "vlen", "shape": [...], "value": [...]}}``.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

FORMAT_VERSION = 3
TIMESTEP_PADDING = 2
METADATA_ATTR = "birdflowr_metadata"
GEOM_RES_ATTR = "birdflowr_res"  # geom/res and geom/ext as read, re-used when the grid is
GEOM_EXT_ATTR = "birdflowr_ext"  # unchanged so re-export is bit-exact
LOGICAL_NA = -128
MAX_KEPT_METADATA = 10_000  # larger metadata arrays (e.g. ebird_coverage) are not kept

SPECIES_FIELDS = (
    "species_code", "scientific_name", "common_name",
    "breeding_quality", "breeding_start", "breeding_end",
    "nonbreeding_quality", "nonbreeding_start", "nonbreeding_end",
    "postbreeding_migration_quality", "postbreeding_migration_start", "postbreeding_migration_end",
    "prebreeding_migration_quality", "prebreeding_migration_start", "prebreeding_migration_end",
)

# Paths BirdFlowR's import_birdflow() refuses to read a file without, plus the ones it uses
# unchecked (dynamic_mask) - in the order we report the first missing one.
REQUIRED_PATHS = (
    "geom", "geom/nrow", "geom/ncol", "geom/res", "geom/ext", "geom/crs", "geom/mask",
    "geom/dynamic_mask", "transitions", "dates", "distr", "species",
    *(f"species/{name}" for name in SPECIES_FIELDS),
    "metadata", "metadata/has_marginals", "metadata/has_transitions", "metadata/has_distr",
    "metadata/n_transitions", "metadata/n_active", "metadata/n_timesteps",
    "metadata/ebird_version_year", "metadata/ebird_release_year",
    "metadata/ebird_access_end_date", "metadata/birdflow_preprocess_date",
    "metadata/birdflow_model_date", "metadata/is_sparse",
)
FITTED_PATHS = ("metadata/hyperparameters", "metadata/loss_values")
LOSS_COLUMNS = ("total", "obs", "dist", "ent")  # plot_loss() needs exactly these names
# read by BirdFlowPipeline's identify_hdf5_model() and plot_tuning(); also name the file
NAMING_HYPERPARAMETERS = ("obs_weight", "ent_weight", "dist_weight", "dist_pow")
# metadata keys written from the model itself, never from the kept JSON
DERIVED_METADATA = ("birdflow_version", "n_active", "n_timesteps", "n_transitions",
                    "timestep_padding", "has_distr", "has_transitions", "is_sparse")
LOGICAL_METADATA = ("has_distr", "has_marginals", "has_transitions", "is_sparse")


def default_filename(model) -> str:
    """Pipeline name ``<species>_<year>_<res>km_obs{obs}_ent{ent}_dist{dist}_pow{pow}.hdf5``.

    The weights are formatted as Python floats (``obs1.0``), as BirdFlowPipeline expects.

    Raises:
        ConfigError: a naming hyperparameter is missing from ``model.hyperparameters``.
    """
    from birdflow.errors import ConfigError

    hp = model.hyperparameters
    missing = [k for k in NAMING_HYPERPARAMETERS if hp.get(k) is None]
    if missing:
        raise ConfigError(f"model hyperparameters lack {missing}; BirdFlowPipeline identifies "
                          "models by them - set them in the run config or pass an explicit path")
    attrs = model.data.attrs
    res_txt = f"{float(attrs.get('res_km', 0.0)):g}"  # 100.00000000000009 -> "100"
    return (f"{attrs.get('species_code', 'unknown')}_{int(attrs.get('version_year', 0))}_"
            f"{res_txt}km_obs{float(hp['obs_weight'])}_ent{float(hp['ent_weight'])}_"
            f"dist{float(hp['dist_weight'])}_pow{float(hp['dist_pow'])}.hdf5")


def fixed_strings(values) -> np.ndarray:
    """Byte strings of one fixed width (the longest value, at least 1), as rhdf5 writes."""
    encoded = [str(v).encode("utf-8") for v in np.ravel(np.asarray(values, dtype=object))]
    width = max([1, *(len(b) for b in encoded)])
    return np.array(encoded, dtype=f"S{width}").reshape(np.shape(values))


def write_r_dataset(group: h5py.Group, name: str, data, logical: bool = False) -> h5py.Dataset:
    """Write ``data`` the way rhdf5 does: gzip-6 in one chunk, attribute ``rhdf5-NA.OK``.

    ``logical=True`` stores 0/1 (NA = -128) as int8 with ``storage.mode = "logical"`` so R
    reads it back as a logical vector or matrix. Compound tables (``dates``) get neither the
    shuffle filter nor the NA attribute, as in files written by BirdFlowR.
    """
    data = np.asarray(data)
    if logical:
        data = data.astype(np.int8)
    compound = data.dtype.names is not None
    kwargs = {}
    if data.ndim and data.size:
        kwargs = {"compression": "gzip", "compression_opts": 6, "shuffle": not compound,
                  "chunks": data.shape}
    dset = group.create_dataset(name, data=data, **kwargs)
    if not compound:
        dset.attrs.create("rhdf5-NA.OK", np.array([1], dtype=np.int32))
    if logical:
        dset.attrs.create("storage.mode", np.array([b"logical"], dtype="S8"))
    return dset


def grid_centres(ext, res, ncol: int, nrow: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y, north first) centres in metres from ``ext`` and ``res``.

    Args:
        ext: (xmin, xmax, ymin, ymax) metres; res: (xres, yres) metres.
    """
    xres, yres = float(res[0]), float(res[1])
    x = float(ext[0]) + xres * (np.arange(ncol) + 0.5)
    y = float(ext[3]) - yres * (np.arange(nrow) + 0.5)
    return x, y


def encode_entry(dset: h5py.Dataset) -> dict | None:
    """JSON-able description of a metadata dataset, or None when it is not kept."""
    if dset.dtype.names is not None or dset.size > MAX_KEPT_METADATA:
        return None
    value = dset[()]
    if h5py.check_string_dtype(dset.dtype) is not None and h5py.check_string_dtype(
            dset.dtype).length is None:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return {"dtype": "vlen", "shape": list(dset.shape), "value": text}
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        values = [b.decode("utf-8") for b in arr.ravel()]
    elif arr.dtype.kind in "biuf":
        values = arr.ravel().tolist()
    else:
        return None
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "value": values,
            "logical": dset.attrs.get("storage.mode", b"") in (b"logical", "logical")}


def decode_entry(entry: dict):
    """Inverse of :func:`encode_entry`: a numpy array (or a str for ``vlen``)."""
    if entry["dtype"] == "vlen":
        return str(entry["value"])
    if np.dtype(entry["dtype"]).kind == "S":
        return np.array([v.encode("utf-8") for v in entry["value"]],
                        dtype=entry["dtype"]).reshape(entry["shape"])
    return np.array(entry["value"], dtype=entry["dtype"]).reshape(entry["shape"])


def kept_metadata(attrs: dict) -> dict:
    """The kept metadata JSON of a BirdFlowData's attributes ({} when absent)."""
    text = attrs.get(METADATA_ATTR, "")
    return json.loads(text) if text else {}


def scalar(value):
    """A one-element HDF5 value as a Python scalar (bytes decoded)."""
    arr = np.asarray(value)
    item = arr.reshape(-1)[0] if arr.size == 1 else value
    if isinstance(item, bytes):
        return item.decode("utf-8")
    return item.item() if isinstance(item, np.generic) else item
