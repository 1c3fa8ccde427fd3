"""The synthetic species: a producer of both data (an S&T-like raster, tracks) and a true model.

It sits above ``birdflow.data`` and ``birdflow.model`` (it builds the true chain with the model
layer and writes a raster the data layer reads), so the data layer never imports it. Callers
that accept ``species=synthetic`` go through :func:`load_or_preprocess` here, which generates
the raster when needed and then runs the ordinary data pipeline on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import xarray as xr

from birdflow.data import preprocess as _data
from birdflow.synthetic.species import (
    SyntheticFiles,
    ensure_synthetic,
    sample_tracks,
    synthetic_truth,
)

__all__ = ["SyntheticFiles", "ensure_synthetic", "load_or_preprocess", "preprocess",
           "resolve_species", "sample_tracks", "synthetic_truth"]


def resolve_species(species: Mapping, data: Mapping | None = None) -> Mapping:
    """``species`` with ``raster`` pointing at the generated GeoTIFF when it is the synthetic one.

    Any other species (or a synthetic one whose ``raster`` is set) is returned unchanged.
    """
    if str(species.get("code")) != "synthetic" or species.get("raster"):
        return species
    root = Path((data or {}).get("root") or "data")
    files = ensure_synthetic(species, out_dir=root / "synthetic")
    return {**_data.plain_mapping(species), "raster": str(files.raster)}


def preprocess(species: Mapping, data: Mapping | None = None) -> xr.Dataset:
    """:func:`birdflow.data.preprocess.preprocess` that also accepts ``species=synthetic``."""
    return _data.preprocess(resolve_species(species, data), data)


def load_or_preprocess(species: Mapping, data: Mapping | None = None,
                       neighbourhood_km=None) -> tuple[xr.Dataset, Path]:
    """:func:`birdflow.data.preprocess.load_or_preprocess` that also accepts ``species=synthetic``."""
    return _data.load_or_preprocess(resolve_species(species, data), data, neighbourhood_km)
