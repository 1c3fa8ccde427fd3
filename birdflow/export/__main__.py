"""Command line: convert between run directories and BirdFlowR HDF5 files.

    python -m birdflow.export run=<run dir> [out=<file.hdf5 | dir/>]
        Export the fitted model of a run directory (default: the pipeline file name
        ``<species>_<year>_<res>km_obs…_pow….hdf5`` inside the run directory).
    python -m birdflow.export hdf5=<file.hdf5> out=<run dir>
        Import a BirdFlowR model into a new run directory (model.nc, data.nc, run.json), so
        evaluate, routes and maps can read it.

Prints the path written; errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from birdflow.cli import parse_key_values
from birdflow.errors import BirdFlowError, ConfigError
from birdflow.export.hdf5_read import import_birdflowr
from birdflow.export.hdf5_write import export_birdflowr
from birdflow.io import write_text_atomic
from birdflow.model.fitted import DATA_FILE, load_model, save_model

USAGE = ("usage: python -m birdflow.export run=<run dir> [out=<file.hdf5>]  |  "
         "python -m birdflow.export hdf5=<file.hdf5> out=<run dir>")


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments -> dict; only ``run``, ``hdf5`` and ``out`` are known."""
    args = parse_key_values(argv, ("run", "hdf5", "out"), USAGE)
    empty = [k for k, v in args.items() if not v]
    if empty:
        raise ConfigError(f"argument {empty[0]}= not understood: it needs a value; {USAGE}")
    if ("run" in args) == ("hdf5" in args):
        raise ConfigError(f"give exactly one of run= or hdf5=; {USAGE}")
    if "hdf5" in args and "out" not in args:
        raise ConfigError(f"hdf5= needs out=<run dir> to write the imported model to; {USAGE}")
    return args


def import_to_run_dir(hdf5: str | Path, run_dir: str | Path) -> Path:
    """Import a BirdFlowR file into ``run_dir`` (model.nc, data.nc and run.json)."""
    model = import_birdflowr(hdf5)
    run_dir = Path(run_dir)
    save_model(model, run_dir)
    hp = model.hyperparameters
    run = {
        "species": model.data.attrs.get("species_code"),
        # BirdFlowPy fits with the squared-L2 location loss (reference §2.5)
        "loss": hp.get("location_loss", "l2"),
        "data_path": str(run_dir / DATA_FILE),
        "tracks": None,
        "truth": None,
        "seed": hp.get("rng_seed"),
        "status": "finished",
        "steps_done": hp.get("training_steps"),
        "runtime_s": None,  # not recorded in BirdFlowR files
        "imported_from": str(hdf5),
    }
    write_text_atomic(run_dir / "run.json", json.dumps(run, indent=2) + "\n")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 bad input)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if "run" in args:
            out = args.get("out", args["run"] + "/")
            written = export_birdflowr(load_model(args["run"]), out)
        else:
            written = import_to_run_dir(args["hdf5"], args["out"])
    except BirdFlowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
