"""``birdflow export``: convert between run directories and BirdFlowR HDF5 files.

    birdflow export run=<run dir> [out=<file.hdf5 | dir/>]
        Export the fitted model of a run directory (default: the pipeline file name
        ``<species>_<year>_<res>km_obs…_pow….hdf5`` inside the run directory).
    birdflow export run=<run dir> format=geotiff [out=<dir>]
        Write the model and S&T weekly distributions as GeoTIFFs (one band per week, CRS,
        band dates) into the run directory or ``out`` (:mod:`birdflow.export.gis`).
    birdflow export run=<run dir> format=flux [out=<dir>]
        Write net/gross flux across cell boundaries and movement vectors per week as
        ``flux.nc`` and ``flux_<quantity>.tif`` (:mod:`birdflow.evaluation.flux`).
    birdflow export hdf5=<file.hdf5> out=<run dir>
        Import a BirdFlowR model into a new run directory (model.nc, data.nc, run.json), so
        evaluate, routes and maps can read it.

Also ``python -m birdflow.export``. Prints the path written; options:
:class:`birdflow.cli.settings.ExportSettings`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.cli.settings import ExportSettings, settings
from birdflow.errors import ConfigError
from birdflow.evaluation.flux import flux_dataset, write_flux
from birdflow.export.gis import export_run_geotiffs
from birdflow.export.hdf5_write import export_birdflowr
from birdflow.export.import_run import import_to_run_dir
from birdflow.model.fitted import load_model

FORMATS = ("hdf5", "geotiff", "flux")


@command("export", "birdflow export")
def main(cfg: DictConfig) -> Path:
    s = settings(cfg, ExportSettings)
    if (s.run is None) == (s.hdf5 is None):
        raise ConfigError("give exactly one of run=<run dir> (export) or hdf5=<file.hdf5> (import)")
    if s.format not in FORMATS:
        raise ConfigError(f"format={s.format!r}: use hdf5 (BirdFlowR v3), geotiff or flux")
    if s.format in ("geotiff", "flux"):
        if s.run is None:
            raise ConfigError(f"format={s.format} exports a run: give run=<run dir>")
        if s.format == "geotiff":
            written = export_run_geotiffs(s.run, s.out)
        else:
            model = load_model(s.run)
            written = write_flux(flux_dataset(model), model, s.out or s.run)
        for path in written:
            print(path)
        return written[0]
    if s.run is not None:
        written = export_birdflowr(load_model(s.run), s.out or f"{s.run}/")
    elif s.out is None:
        raise ConfigError("out: missing; hdf5= needs out=<run dir> to write the imported model to")
    else:
        written = import_to_run_dir(s.hdf5, s.out)
    print(written)
    return Path(written)


if __name__ == "__main__":
    main()
