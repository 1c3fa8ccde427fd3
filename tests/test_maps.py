"""Maps over the shipped Natural Earth basemap, drawn for a small chain over North America."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb
from PIL import Image
from test_routes import make_na_model

from birdflow.cli.maps import main as maps_command
from birdflow.errors import ConfigError, DataError
from birdflow.evaluation import maps
from birdflow.evaluation.basemap import (
    SEA_COLOUR,
    SEASON_CMAP,
    countries_for,
    distr_image,
    grid_extent,
    season_colour_values,
)
from birdflow.evaluation.metrics import weekly_distr_cor
from birdflow.evaluation.routes import sample_routes
from birdflow.model.fitted import save_model


@pytest.fixture(scope="module")
def na_model():
    return make_na_model()


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


def _count_colour(img: np.ndarray, hex_colour: str) -> int:
    target = (np.asarray(to_rgb(hex_colour)) * 255).round().astype(int)
    return int((np.abs(img - target).max(axis=-1) <= 2).sum())


def test_countries_are_clipped_and_reprojected_to_the_grid(na_model):
    c = countries_for(na_model.data)
    assert {"United States of America", "Mexico"} <= set(c["name"])
    assert "Australia" not in set(c["name"])
    assert c.crs.equals(na_model.data.rio.crs)
    left, right, bottom, top = grid_extent(na_model.data)
    assert (left, right, bottom, top) == (4.9e6, 6.1e6, 9.0e6, 10.4e6)  # 100 km cell edges
    minx, miny, maxx, maxy = c.total_bounds  # the clip box: a few thousand km, not the globe
    assert minx > left - 5e6 and maxx < right + 5e6 and miny > bottom - 5e6 and maxy < top + 5e6


def test_distr_image_rebuilds_the_grid(na_model):
    ds = na_model.data
    vals = np.arange(na_model.n_cells, dtype=float)
    img = distr_image(ds, vals)
    assert img.shape == ds["static_mask"].shape
    assert np.array_equal(np.isfinite(img), ds["static_mask"].values)
    assert img[ds["cell_row"].values[7], ds["cell_col"].values[7]] == 7
    wk = distr_image(ds, vals, week_pos=0)  # week 1: only its dynamic mask stays opaque
    assert np.isfinite(wk).sum() == ds["dynamic_mask"].values[0].sum()


def test_season_palette_runs_blue_green_yellow_red(na_model):
    v = season_colour_values(pd.to_datetime(["2022-01-15", "2022-04-15", "2022-07-15",
                                             "2022-10-15", "2022-12-31"]))
    r, g, b = np.asarray([SEASON_CMAP(x)[:3] for x in v]).T
    assert b[0] > r[0] and b[0] > g[0]  # winter blue
    assert g[1] > r[1] and g[1] > b[1]  # spring green
    assert r[2] > b[2] + 0.5 and g[2] > b[2] + 0.5  # summer yellow
    assert r[3] > g[3] and r[3] > b[3]  # fall red
    assert b[4] > r[4]  # and back to winter blue at the year's end (cyclic)


def test_distribution_map_shows_the_basemap(na_model, tmp_path):
    maps.plot_distributions(na_model, [2, 28], tmp_path / "d.png", dpi=60)
    maps.plot_distributions(na_model, [2, 28], tmp_path / "d0.png", basemap=False, dpi=60)
    a, b = _rgb(tmp_path / "d.png"), _rgb(tmp_path / "d0.png")
    assert a.shape == b.shape and a.std() > 10  # not a blank image
    # the Gulf of Mexico is drawn in the sea colour south of the summer range (week 28)
    assert _count_colour(a, SEA_COLOUR) > 500
    assert _count_colour(b, SEA_COLOUR) == 0
    assert (np.abs(a - b).max(axis=-1) > 30).mean() > 0.02


def test_routes_map_and_basemap_switch(na_model, tmp_path):
    df = sample_routes(na_model, 12, start_week=1, n_weeks=52, seed=4)
    p, p0 = tmp_path / "r.png", tmp_path / "r0.png"
    maps.plot_routes(na_model, df, p, dpi=60)
    maps.plot_routes(na_model, df, p0, basemap=False, dpi=60)
    a, b = _rgb(p), _rgb(p0)
    assert _count_colour(a, SEA_COLOUR) > 500 and _count_colour(b, SEA_COLOUR) == 0
    # the seasons' colours are on the map: some summer-yellow and some winter-blue segments
    for frac in (0.54, 0.04):
        assert _count_colour(a, to_hex(SEASON_CMAP(frac))) > 5


def test_year_animation_has_one_frame_per_week(na_model, tmp_path):
    path = maps.animate_year(na_model, tmp_path / "year.gif", dpi=40)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 52
        im.seek(0)
        first = np.asarray(im.convert("RGB"), dtype=int)
        im.seek(26)
        mid = np.asarray(im.convert("RGB"), dtype=int)
    assert (np.abs(first - mid).max(axis=-1) > 30).sum() > 100  # the birds moved north


def test_loss_and_fit_curves(na_model, tmp_path):
    hist = pd.DataFrame({"step": np.arange(0, 300, 10), **na_model.loss_history})
    maps.plot_loss(hist, tmp_path / "loss.png")
    maps.plot_loss(na_model.loss_history, tmp_path / "loss2.png")
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "loss2.png").stat().st_size > 10_000
    with pytest.raises(DataError, match="none of"):
        maps.plot_loss({"foo": [1.0, 2.0]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    cor = weekly_distr_cor(na_model)
    assert cor.shape == (52,) and np.all(cor > 0.5) and cor[0] == pytest.approx(1.0)
    fits = {"model": cor, "noisy": cor - 0.1}
    maps.plot_fit_per_week(fits, tmp_path / "fit.png")
    assert (tmp_path / "fit.png").stat().st_size > 10_000


def test_plots_draw_into_the_callers_axes_and_return_the_figure(na_model, tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8))
    grid = fig.subplots(3, 2)
    df = sample_routes(na_model, 5, start_week=1, n_weeks=10, seed=1)
    assert maps.plot_routes(na_model, df, ax=grid[0, 0]) is fig
    assert maps.plot_loss(na_model.loss_history, ax=grid[0, 1]) is fig
    assert maps.plot_distributions(na_model, [2], ax=grid[1:, 0]) is fig  # 2 x 1 panels
    assert grid[0, 0].collections and grid[0, 1].lines and grid[1, 0].images and grid[2, 0].images
    assert not grid[1, 1].has_data() and not list(tmp_path.iterdir())  # no path: nothing written
    alone = maps.plot_loss(na_model.loss_history)
    assert isinstance(alone, Figure) and alone is not fig and len(alone.axes) == 1
    with pytest.raises(ConfigError, match="needs 2 x 2 axes"):
        maps.plot_distributions(na_model, [2, 28], ax=grid[1:, 0])
    with pytest.raises(ConfigError, match=r"weeks=\[60\]"):
        maps.plot_distributions(na_model, [60])


@pytest.mark.slow
def test_maps_cli_writes_every_figure(na_model, tmp_path):
    run = tmp_path / "run"
    save_model(na_model, run)
    (run / "run.json").write_text(json.dumps({"species": "tstspc", "loss": "l2", "truth": None}))
    written = maps_command([f"run={run}", "dpi=50", "n_routes=8"])
    names = {p.name for p in written}
    assert names == {"distributions.png", "routes.png", "year.gif", "loss.png", "fit_per_week.png"}
    for p in written:
        assert p.parent == run / "figures" and p.stat().st_size > 5_000
    assert not list((run / "figures").glob(".*.part"))  # atomic writes left nothing behind
