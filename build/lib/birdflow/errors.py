"""Exceptions with one-line messages that name the file or key, the problem and the fix."""

from __future__ import annotations


class BirdFlowError(Exception):
    """Base class for every error birdflow raises on bad input or configuration."""


class DataError(BirdFlowError):
    """A data file (raster, NetCDF, CSV, HDF5) is missing, malformed or unusable."""


class ConfigError(BirdFlowError):
    """A configuration value is missing or out of range."""


class DownloadError(BirdFlowError):
    """eBird Status & Trends download failed (no key, bad key, network, truncated file)."""
