"""Data layer: eBird S&T rasters -> BirdFlowData (an xarray Dataset saved as NetCDF)."""

from birdflow.data.bfdata import load_bfdata, make_bfdata, save_bfdata, validate_bfdata

__all__ = ["load_bfdata", "make_bfdata", "save_bfdata", "validate_bfdata"]
