"""Flux across cell boundaries, movement vectors, their files and maps (issue 14 item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import independence_model, make_tiny_bfdata
from PIL import Image

from birdflow.evaluation.flux import _crossings, flux_dataset, transition_flux, write_flux
from birdflow.evaluation.movement_maps import animate_routes, plot_flux, plot_movement_vectors


@pytest.fixture(scope="module")
def model():
    m = independence_model(make_tiny_bfdata())
    m.marginals = m.marginals ** 2  # not an independence chain: moves have a pattern
    m.marginals /= m.marginals.sum(axis=(1, 2), keepdims=True)
    return m


def test_crossings_of_hand_moves():
    f = np.array
    # (col, row) (0, 0) -> (2, 0): two east edges; (0, 2) -> (0, 0): two north edges
    ne, nn, ge, gn = _crossings(f([0.0, 0.0]), f([0.0, 2.0]), f([2.0, 0.0]), f([0.0, 0.0]),
                                f([1.0, 0.5]), 3, 3)
    assert ne[0, 0] == ne[0, 1] == 1.0 and np.abs(ne).sum() == 2.0
    assert nn[2, 0] == nn[1, 0] == 0.5 and np.abs(nn).sum() == 1.0
    np.testing.assert_array_equal(ge, np.abs(ne))
    # the reverse move west gives negative net flux and the same gross flux
    ne2, _, ge2, _ = _crossings(f([2.0]), f([0.0]), f([0.0]), f([0.0]), f([1.0]), 3, 3)
    np.testing.assert_array_equal(ne2, -ne)  # ne holds only the first (eastward) move
    np.testing.assert_array_equal(ge2, ge)
    # a diagonal step through a corner crosses exactly one east and one north edge
    ne3, nn3, _, _ = _crossings(f([0.0]), f([1.0]), f([1.0]), f([0.0]), f([1.0]), 3, 3)
    assert np.abs(ne3).sum() == 1.0 and np.abs(nn3).sum() == 1.0


def test_flux_is_conservative_for_every_cell_and_week(model):
    ds = model.data
    rows, cols = ds["cell_row"].values, ds["cell_col"].values
    for t in range(model.n_transitions):
        F = transition_flux(model, t)
        e, n = F["net_east"], F["net_north"]
        outflow = e.copy()
        outflow[:, 1:] -= e[:, :-1]  # east edge out, west edge (east edge of the left cell) in
        outflow += n
        outflow[:-1, :] -= n[1:, :]  # north edge out, south edge (north edge of the row below) in
        change = np.zeros(ds["static_mask"].shape)
        change[rows, cols] = model.distr_at(t) - model.distr_at(t + 1)
        np.testing.assert_allclose(outflow, change, atol=1e-15)
        assert np.all(F["gross_east"] >= np.abs(e) - 1e-15)


def test_movement_vectors_are_mean_displacements(model):
    ds = model.data
    t = 20
    F = transition_flux(model, t)
    P = model.transition_at(t)
    i = int(np.argmax(model.distr_at(t)))
    r, c = int(ds["cell_row"][i]), int(ds["cell_col"][i])
    cx, cy = ds["cell_x"].values, ds["cell_y"].values
    assert F["move_dx"][r, c] == pytest.approx(P[i] @ (cx - cx[i]))
    assert F["move_dy"][r, c] == pytest.approx(P[i] @ (cy - cy[i]))
    assert F["move_weight"][r, c] == ds["distr"].values[t, i]


def test_flux_files_maps_and_routes_gif(model, tmp_path):
    flux = flux_dataset(model)
    paths = write_flux(flux, model, tmp_path)
    with xr.open_dataset(tmp_path / "flux.nc", decode_coords="all") as f:
        assert f.attrs["Conventions"] == "CF-1.8" and f["net_east"].rio.crs is not None
        np.testing.assert_allclose(f["gross_north"].values, flux["gross_north"].values)
    with rasterio.open(tmp_path / "flux_net_east.tif") as src:
        assert src.count == 52 and src.descriptions[0] == "2022-01-04"
        np.testing.assert_allclose(src.read(3), flux["net_east"].values[2], rtol=1e-6, atol=1e-12)
    assert len(paths) == 7
    fig = plot_flux(model, flux, 10, path=tmp_path / "flux.png", basemap=False)
    assert len(fig.axes[0].collections) == 1  # the arrows
    plot_movement_vectors(model, flux, 10, path=tmp_path / "move.png", basemap=False)
    assert (tmp_path / "flux.png").stat().st_size > 5_000
    routes = model.route(5, 10, 16, from_marginals=True)
    gif = animate_routes(model, routes, tmp_path / "routes.gif", basemap=False)
    with Image.open(gif) as im:
        assert im.n_frames == 7  # one frame per week 10..16


def test_export_command_writes_flux(model, tmp_path):
    from conftest import run_command

    from birdflow.cli.export import main
    from birdflow.model.fitted import save_model

    save_model(model, tmp_path / "run")
    assert run_command(main, [f"run={tmp_path / 'run'}", "format=flux", f"out={tmp_path}"]) == 0
    with rasterio.open(tmp_path / "flux_gross_north.tif") as src:
        assert src.count == 52 and src.crs is not None
