"""A BirdFlowR HDF5 model imported as a run dir (``birdflow export hdf5=<file> out=<dir>``)."""

from __future__ import annotations

import os
from pathlib import Path

from birdflow.export.hdf5_read import import_birdflowr
from birdflow.model.fitted import DATA_FILE, save_model
from birdflow.runs import write_run_info


def import_to_run_dir(hdf5: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Import a BirdFlowR file into ``run_dir`` (model.nc, data.nc and run.json), so that
    evaluate, routes, maps and export read it like a trained run."""
    model = import_birdflowr(hdf5)
    run_dir = Path(run_dir)
    save_model(model, run_dir)
    hp = model.hyperparameters
    write_run_info(
        run_dir,
        species=model.data.attrs.get("species_code"),
        # BirdFlowPy fits with the squared-L2 location loss (reference §2.5)
        loss=hp.get("location_loss", "l2"),
        data_path=run_dir / DATA_FILE,
        tracks=None,
        truth=None,
        seed=hp.get("rng_seed"),
        status="finished",
        steps_done=hp.get("training_steps"),
        runtime_s=None,  # not recorded in BirdFlowR files
        imported_from=hdf5,
    )
    return run_dir
