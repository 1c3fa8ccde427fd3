"""Interoperability with BirdFlowR: export fitted models to, and import them from, HDF5 (v3)."""

from birdflow.export.birdflowr import default_filename
from birdflow.export.hdf5_read import import_birdflowr
from birdflow.export.hdf5_write import export_birdflowr

__all__ = ["default_filename", "export_birdflowr", "import_birdflowr"]
