"""A fitted model's files in its run directory: ``model.nc`` (CF NetCDF) and ``data.nc``.

``model.nc`` holds the joints ``marginals`` (float32) in the slot layout, ``slot_cell``,
the weekly model distributions as ``distr`` / ``distr_map`` (for GIS tools), the
hyperparameters (JSON attribute) and the loss history (``loss_<name>`` on ``step``). A
neighbourhood-sparse model stores ``marginals`` on (transition, slot, neighbour) and its
neighbour table ``nbr`` (int32, same dims, -1 = padding) beside them; files without ``nbr``
are dense models and load as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from birdflow.data.bfdata import load_bfdata, save_bfdata
from birdflow.data.cf import to_cf
from birdflow.errors import DataError
from birdflow.io import atomic_hdf5
from birdflow.model.markov import WeekIndex

if TYPE_CHECKING:
    from birdflow.model.fitted import BirdFlowModel

MODEL_FILE = "model.nc"
DATA_FILE = "data.nc"
NBR_ATTRS = {"units": "1", "long_name": "week t + 1 slot of the k-th cell reachable from slot i "
             "of week t (-1 = padding); marginals[t, i, k] is the joint of that pair"}
SPARSE_MARGINALS_LONG_NAME = ("joint probability of (cell at week t, its k-th neighbour at week "
                              "t + 1), neighbourhood-sparse slot layout paired with nbr")


def save_model(model: BirdFlowModel, run_dir: str | os.PathLike) -> Path:
    """Write ``model.nc`` (marginals, slot layout, hyperparameters, losses) and ``data.nc``."""
    run_dir = Path(run_dir)
    data = model.data
    to_dim = "neighbour" if model.sparse else "slot_to"
    ds = xr.Dataset(
        {
            "marginals": (("transition", "slot", to_dim), model.marginals.astype(np.float32)),
            "slot_cell": (("week", "slot"), model.index.slot_cell),
            "mu": (("week", "cell"), model.distrs()),
            "cell_row": data["cell_row"], "cell_col": data["cell_col"],
        },
        coords={"week": data["week"].values, "date": ("week", data["date"].values),
                "x": data["x"].values, "y": data["y"].values},
        attrs={"cyclic": int(model.cyclic), "hyperparameters": json.dumps(model.hyperparameters)},
    )
    ds = to_cf(ds.rio.write_crs(data.attrs.get("crs_wkt") or data.rio.crs.to_wkt()),
               {"mu": "distr"}, title=f"BirdFlow model {data.attrs.get('species_code', '')}: "
               "weekly distributions of the fitted chain")
    ds["distr"].attrs["long_name"] = "model distribution of the week (map; NaN = inactive cell)"
    if model.sparse:
        ds["nbr"] = (("transition", "slot", "neighbour"), model.index.nbr.astype(np.int32))
        ds["nbr"].attrs = dict(NBR_ATTRS)
        ds["marginals"].attrs["long_name"] = SPARSE_MARGINALS_LONG_NAME
    for name, values in model.loss_history.items():
        ds[f"loss_{name}"] = ("step", np.asarray(values, dtype=np.float64))
    with atomic_hdf5(run_dir / MODEL_FILE, int(ds.nbytes)) as target:
        ds.to_netcdf(target, engine="h5netcdf")
    save_bfdata(model.data, run_dir / DATA_FILE)
    return run_dir / MODEL_FILE


def load_model(run_dir: str | os.PathLike) -> BirdFlowModel:
    """Read a model written by :func:`save_model` from a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.exists():
        raise DataError(f"{path}: no fitted model here; pass the run directory that "
                        "`python -m birdflow.train` printed (outputs/<species>/<loss>/<timestamp>)")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as f:
            ds = f.load()
        nbr = ds["nbr"].values.astype(np.int32) if "nbr" in ds else None
        index = WeekIndex(slot_cell=ds["slot_cell"].values.astype(np.int32),
                          cyclic=bool(ds.attrs["cyclic"]), nbr=nbr)
        hyper = json.loads(ds.attrs.get("hyperparameters", "{}"))
        marginals = ds["marginals"].values.astype(np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:  # truncated, not NetCDF, or not ours
        first = " ".join(str(e).split())[:160]
        raise DataError(f"{path}: not a readable model file ({type(e).__name__}: {first}); "
                        "restore it from a copy of the run, or re-train (resume=<run dir> "
                        "continues from its last checkpoint)") from None
    data = load_bfdata(run_dir / DATA_FILE)
    losses = {k[5:]: ds[k].values for k in ds.data_vars if k.startswith("loss_")}
    from birdflow.model.fitted import BirdFlowModel  # fitted imports this module
    return BirdFlowModel(data=data, index=index, marginals=marginals, hyperparameters=hyper,
                         loss_history=losses, run_dir=run_dir)
