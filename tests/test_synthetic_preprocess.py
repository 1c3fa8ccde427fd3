"""The synthetic species' GeoTIFF through the real preprocessing: two resolutions and a budget."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from omegaconf import OmegaConf

from birdflow.data.bfdata import n_parameters
from birdflow.data.resolution import clean_ladder, clean_resolution
from birdflow.model.fitted import load_model
from birdflow.synthetic import preprocess
from birdflow.synthetic.species import ensure_synthetic


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    species = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "species" / "synthetic.yaml"))
    files = ensure_synthetic(species, root / "synthetic")
    return species, {"root": str(root)}, load_model(files.truth)


def _check(ds):
    assert ds.sizes["week"] == 52 and ds.attrs["cyclic"] == 1
    np.testing.assert_allclose(ds["distr"].values.sum(axis=1), 1.0, atol=1e-12)
    assert np.isfinite(ds["distr"].values).all() and ds["distr"].values.min() >= 0
    assert ds["distr"].values.max() < 1  # no -3.4e38 sentinel or its normalised echo


def test_native_resolution_reproduces_the_truth_cells(setup):
    species, data, truth = setup
    ds = preprocess({**species, "res_km": 100}, data)
    _check(ds)
    assert ds.sizes["cell"] == truth.n_cells
    np.testing.assert_array_equal(ds["cell_x"].values, truth.data["cell_x"].values)
    np.testing.assert_array_equal(ds["dynamic_mask"].values, truth.data["dynamic_mask"].values)
    np.testing.assert_allclose(ds["distr"].values, truth.data["distr"].values, rtol=1e-6)


def test_200km_cells_hold_the_sum_of_their_100km_children(setup):
    species, data, truth = setup
    ds = preprocess({**species, "res_km": 200}, data)
    _check(ds)
    fine = truth.data
    # each 100 km cell lies in exactly one 200 km cell; mean aggregation + normalisation = sum
    col = np.floor((fine["cell_x"].values - (ds["x"].values[0] - 1e5)) / 2e5).astype(int)
    row = np.floor(((ds["y"].values[0] + 1e5) - fine["cell_y"].values) / 2e5).astype(int)
    ids = np.full(ds["static_mask"].shape, -1)
    ids[ds["static_mask"].values] = np.arange(ds.sizes["cell"])
    parent = ids[row, col]
    assert (parent >= 0).all()
    summed = np.zeros((52, ds.sizes["cell"]))
    for t in range(52):
        np.add.at(summed[t], parent, fine["distr"].values[t])
    np.testing.assert_allclose(ds["distr"].values, summed, rtol=1e-6, atol=1e-12)
    assert ds.sizes["cell"] < truth.n_cells / 3


def test_resolution_from_a_parameter_budget(setup):
    species, data, _ = setup
    budget = 60_000
    ds = preprocess({**species, "res_km": None, "max_params": budget}, data)
    _check(ds)
    res, n = ds.attrs["res_km"], n_parameters(ds["dynamic_mask"].values)
    assert res == clean_resolution(res) and 100 < res and n <= budget
    ladder = clean_ladder(100)
    finer = ladder[np.flatnonzero(ladder == res)[0] - 1]
    n_finer = n_parameters(preprocess({**species, "res_km": float(finer)}, data)["dynamic_mask"].values)
    assert n_finer > budget


def test_season_dates_from_the_raster_reach_the_birdflowr_export(setup, tmp_path):
    import h5py
    from conftest import independence_model

    from birdflow.data.seasons import season_span
    from birdflow.export import export_birdflowr
    from birdflow.synthetic.flyway import true_season_weeks

    species, data, truth = setup
    # the known chain: north weeks 11..20, breeding 21..32, south 33..44, winter 45..10
    assert true_season_weeks() == {"prebreeding_migration": (11, 20), "breeding": (21, 32),
                                   "postbreeding_migration": (33, 44), "nonbreeding": (45, 10)}
    ds = preprocess({**species, "res_km": 100}, data)
    assert ds.attrs["prebreeding_migration_start"] == "2022-03-15"  # week 11 centre, 2022
    assert ds.attrs["nonbreeding_end"] == "2022-03-08" and ds.attrs["breeding_quality"] == "3"
    assert season_span(ds, "prebreeding") == (10, 21)  # buffered by one week, as BirdFlowR
    path = export_birdflowr(independence_model(ds), tmp_path / "syn.hdf5")
    with h5py.File(path, "r") as f:
        fields = {k: f[f"species/{k}"][0] for k in f["species"]}
    assert fields["prebreeding_migration_start"] == b"2022-03-15"
    assert fields["postbreeding_migration_end"] == b"2022-11-01" and fields["breeding_quality"] == 3
    # the species config wins over the raster
    own = preprocess({**species, "res_km": 100, "seasons": {"breeding": ["2022-06-01",
                                                                         "2022-08-01"]}}, data)
    assert own.attrs["breeding_start"] == "2022-06-01" and own.attrs["breeding_end"] == "2022-08-01"


def test_seasons_inferred_from_distributions_when_nothing_gives_them(setup):
    from birdflow.data.seasons import infer_seasons

    _, _, truth = setup
    got = infer_seasons(truth.data)  # weekly mean latitude rule, thresholds 0.9 / 0.1
    # close to the generator's seasons (breeding 21..32, winter 45..10): within a week
    assert got["breeding_start"] == "2022-05-24" and got["nonbreeding_start"] == "2022-11-08"
    assert got["prebreeding_migration_start"] == "2022-03-15"
