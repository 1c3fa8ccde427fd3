"""Maps of flux and movement vectors, and an animated routes GIF.

* :func:`plot_flux`: one transition's traffic (gross flux through each cell, half the sum over
  its four edges) as cells, with net-flux arrows at cell centres (east component = mean of
  the west and east edges' net flux, north likewise);
* :func:`plot_movement_vectors`: BirdFlowR's movement vectors, arrows from each cell to its
  mean destination, width and opacity by the S&T density of the start cell;
* :func:`animate_routes`: routes revealed week by week (a dot per bird, its trail behind),
  coloured by BirdFlowR's seasonal palette, as a GIF.

Each plot function draws into ``ax`` when given (and returns its figure) or makes its own
figure; with ``path`` the figure is written there as PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from birdflow.evaluation.basemap import (
    SEASON_CMAP,
    draw_basemap,
    grid_extent,
    panel_width,
    season_colour_values,
)
from birdflow.io import atomic_path
from birdflow.model.fitted import BirdFlowModel


def _axes(model: BirdFlowModel, ax, basemap: bool):
    if ax is None:
        fig = Figure(figsize=(panel_width(model.data, 5.0) + 1.2, 5.0), layout="constrained")
        ax = fig.subplots()
    if basemap:
        draw_basemap(ax, model.data)
    left, right, bottom, top = grid_extent(model.data)
    ax.set(xlim=(left, right), ylim=(bottom, top), aspect="equal", xticks=[], yticks=[])
    return ax.figure, ax


def _save(fig: Figure, path, dpi: int) -> None:
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)


def cell_flux_vectors(flux: xr.Dataset, transition: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u east, v north, traffic) per grid cell of a 1-based ``transition``."""
    f = flux.sel(transition=transition)
    e, n = f["net_east"].values, f["net_north"].values
    west = np.zeros_like(e)
    west[:, 1:] = e[:, :-1]
    south = np.zeros_like(n)
    south[:-1, :] = n[1:, :]
    ge, gn = f["gross_east"].values, f["gross_north"].values
    gw = np.zeros_like(ge)
    gw[:, 1:] = ge[:, :-1]
    gs = np.zeros_like(gn)
    gs[:-1, :] = gn[1:, :]
    return (e + west) / 2, (n + south) / 2, (ge + gw + gn + gs) / 2


def plot_flux(model: BirdFlowModel, flux: xr.Dataset, transition: int, *, ax=None,
              path: str | os.PathLike | None = None, basemap: bool = True, dpi: int = 110) -> Figure:
    """Traffic and net flux arrows of a 1-based ``transition`` (see module doc)."""
    fig, ax = _axes(model, ax, basemap)
    u, v, traffic = cell_flux_vectors(flux, transition)
    left, right, bottom, top = grid_extent(model.data)
    shown = np.where(traffic > 0, traffic, np.nan)
    im = ax.imshow(shown, extent=(left, right, bottom, top), cmap="magma_r", zorder=2, alpha=0.85)
    fig.colorbar(im, ax=ax, shrink=0.7, label="traffic (proportion of population per week)")
    xx, yy = np.meshgrid(model.data["x"].values, model.data["y"].values)
    keep = np.hypot(u, v) > 1e-4 * max(float(np.nanmax(traffic, initial=0)), 1e-300)
    ax.quiver(xx[keep], yy[keep], u[keep], v[keep], color="#1b4f72", zorder=4, pivot="middle")
    date = pd.Timestamp(flux["date"].sel(transition=transition).values)
    ax.set_title(f"net flux, week {int(flux['week'].sel(transition=transition))} -> next "
                 f"({date:%b %d})")
    _save(fig, path, dpi)
    return fig


def plot_movement_vectors(model: BirdFlowModel, flux: xr.Dataset, transition: int, *, ax=None,
                          path: str | os.PathLike | None = None, basemap: bool = True,
                          dpi: int = 110) -> Figure:
    """Arrows from each cell to its mean destination, by S&T density of the start cell."""
    fig, ax = _axes(model, ax, basemap)
    f = flux.sel(transition=transition)
    xx, yy = np.meshgrid(model.data["x"].values, model.data["y"].values)
    w = f["move_weight"].values
    ok = np.isfinite(w) & (w > 0)
    rel = w[ok] / w[ok].max()
    ax.quiver(xx[ok], yy[ok], f["move_dx"].values[ok], f["move_dy"].values[ok], rel,
              cmap="viridis", angles="xy", scale_units="xy", scale=1, width=0.004, zorder=4)
    ax.set_title(f"movement vectors, week {int(f['week'])} -> next")
    _save(fig, path, dpi)
    return fig


def animate_routes(model: BirdFlowModel, routes: pd.DataFrame, path: str | os.PathLike, *,
                   fps: float = 4.0, trail: int = 4, basemap: bool = True, dpi: int = 80) -> Path:
    """GIF of the routes revealed date by date: dots now, trails of ``trail`` weeks behind."""
    routes = routes.sort_values(["route_id", "date"], kind="stable")
    dates = np.sort(pd.unique(routes["date"]))
    ids = pd.unique(routes["route_id"])
    xy = np.full((len(ids), len(dates), 2), np.nan)
    pos_of = {d: k for k, d in enumerate(dates)}
    row_of = {r: k for k, r in enumerate(ids)}
    for r, d, x, y in routes[["route_id", "date", "x", "y"]].itertuples(index=False):
        xy[row_of[r], pos_of[d]] = (x, y)
    colours = SEASON_CMAP(season_colour_values(pd.DatetimeIndex(dates)))
    fig, ax = _axes(model, None, basemap)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    fig.set_layout_engine("none")
    frames = []
    for k, d in enumerate(dates):
        behind = slice(max(0, k - trail), k + 1)
        lines = [ax.plot(xy[i, behind, 0], xy[i, behind, 1], color=colours[k], lw=1, alpha=0.6,
                         zorder=4)[0] for i in range(len(ids))]
        dots = ax.scatter(xy[:, k, 0], xy[:, k, 1], s=12, color=colours[k], edgecolor="black",
                          linewidth=0.3, zorder=5)
        title = ax.set_title(f"{len(ids)} routes, {pd.Timestamp(d):%Y-%m-%d}")
        canvas.draw()
        rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
        frames.append(rgb.quantize(colors=255, method=Image.Quantize.FASTOCTREE))
        for artist in (*lines, dots):
            artist.remove()
        title.set_text("")
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(1000 / fps), loop=0, optimize=False)
    return Path(path)
