"""Migration maps: model vs S&T distributions, routes, a yearly animation, loss and fit curves.

Each ``plot_*`` function returns the matplotlib ``Figure`` it drew on: a new one (Agg canvas,
no pyplot state) or, with ``ax=``, the figure of the axes given, so plots compose into a
user's own layout. With ``path=`` the figure is also written there (PNG, atomically). Maps are
drawn over the shipped Natural Earth basemap (:mod:`birdflow.evaluation.basemap`).

CLI: ``birdflow maps run=<dir>`` (:mod:`birdflow.maps`) writes every figure of a run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from PIL import Image

from birdflow.errors import ConfigError, DataError
from birdflow.evaluation.basemap import (
    SEASON_CMAP,
    distr_image,
    draw_basemap,
    draw_borders,
    draw_graticule,
    grid_extent,
    panel_width,
    season_colour_values,
)
from birdflow.io import atomic_path
from birdflow.model.fitted import BirdFlowModel

DISTR_CMAP = "viridis"
LOSS_TERMS = ("total", "obs", "dist", "ent")


def species_label(model: BirdFlowModel) -> str:
    """Common name when known (``common_name`` attribute), else the species code."""
    a = model.data.attrs
    return str(a.get("common_name") or a.get("species_code") or "species")


def _week_label(model: BirdFlowModel, pos: int) -> str:
    d = pd.Timestamp(model.data["date"].values[pos])
    return f"week {int(model.data['week'].values[pos])} · {d:%b} {d.day}"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (nothing half-written is left)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def _finish(fig: Figure, path, dpi: int) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


def _new_axes(ax, figsize, shape: tuple[int, int] | None = None):
    """(figure, axes): the caller's ``ax`` (one Axes, or an array of ``shape``), else new ones."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, (fig.subplots(*shape, squeeze=False) if shape else fig.subplots())
    if shape is None:
        return ax.figure, ax
    axes = np.asarray(ax, dtype=object)
    if axes.size != shape[0] * shape[1]:
        raise ConfigError(f"ax: needs {shape[0]} x {shape[1]} axes for this plot, got {axes.size}")
    axes = axes.reshape(shape)
    return axes.flat[0].figure, axes


def _map_panel(ax, model: BirdFlowModel, basemap: bool) -> None:
    if basemap:
        draw_basemap(ax, model.data)
    draw_graticule(ax, model.data)


def _cells(ax, model: BirdFlowModel, values, pos: int, norm, basemap: bool):
    im = ax.imshow(distr_image(model.data, values, pos), extent=grid_extent(model.data),
                   origin="upper", cmap=DISTR_CMAP, norm=norm, interpolation="nearest", zorder=1)
    borders = draw_borders(ax, model.data) if basemap else []
    ax.set(xlabel="", ylabel="")  # geopandas labels the axes with the CRS's axis names
    return im, borders


def plot_distributions(model: BirdFlowModel, weeks, path: str | os.PathLike | None = None,
                       basemap: bool = True, dpi: int = 110, *, ax=None) -> Figure:
    """Model (top row) vs S&T (bottom row) distributions for a few 1-based S&T week numbers.

    Colours share one square-root scale (share of the population per cell); cells outside a
    week's dynamic mask are transparent. ``ax``: 2 x len(weeks) axes to draw into.
    """
    all_weeks = list(model.data["week"].values)
    missing = [int(w) for w in weeks if int(w) not in all_weeks]
    if missing:
        raise ConfigError(f"weeks={missing}: not among the model's S&T weeks "
                          f"({all_weeks[0]}..{all_weeks[-1]})")
    pos = [all_weeks.index(int(w)) for w in weeks]
    rows = [("BirdFlow model", [model.distr_at(p) for p in pos]),
            ("eBird S&T", [model.data["distr"].values[p] for p in pos])]
    vmax = max(float(np.max(v)) for _, vals in rows for v in vals)
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    fig, axes = _new_axes(ax, ((panel_width(model.data, 2.8) + 0.5) * len(pos) + 1.3, 6.8),
                          (2, len(pos)))
    for r, (label, vals) in enumerate(rows):
        for c, p in enumerate(pos):
            ax = axes[r, c]
            _map_panel(ax, model, basemap)
            im, _ = _cells(ax, model, vals[c], p, norm, basemap)
            ax.set_title(f"{label}\n{_week_label(model, p)}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label="share of population in cell (sqrt scale)")
    fig.suptitle(f"{species_label(model)}: weekly distribution, model vs eBird S&T", fontsize=11)
    return _finish(fig, path, dpi)


def plot_routes(model: BirdFlowModel, routes_df: pd.DataFrame, path: str | os.PathLike | None = None,
                basemap: bool = True, jitter: float = 0.25, seed: int = 0, dpi: int = 110, *,
                ax=None) -> Figure:
    """Routes over the basemap, coloured by date with a cyclic season palette.

    Each weekly step is a segment coloured by the date it starts (winter blue, spring green,
    summer yellow, fall red); dots mark stays, sized by weeks spent in the cell; an open
    circle marks each start. Positions are jittered by up to ``jitter`` cells so that
    routes through the same cells stay apart.
    """
    data = model.data
    fig, ax = _new_axes(ax, (panel_width(model.data, 6.5) + 2.2, 7.2))
    _map_panel(ax, model, basemap)
    # outline of the model's range (static mask), traced along the cell edges
    mask = np.pad(data["static_mask"].values.astype(float), 1)
    left, right, bottom, top = grid_extent(data)
    ny, nx = data["static_mask"].shape
    dx, dy = (right - left) / nx, (top - bottom) / ny
    up = np.repeat(np.repeat(mask, 8, axis=0), 8, axis=1)  # sub-cells keep the outline on edges
    xs = left - dx + (np.arange(up.shape[1]) + 0.5) * dx / 8
    ys = top + dy - (np.arange(up.shape[0]) + 0.5) * dy / 8
    ax.contour(xs, ys, up, levels=[0.5], colors="#555555", linewidths=0.8, linestyles="--", zorder=1)
    if basemap:
        draw_borders(ax, data, zorder=1.5)
    ax.set(xlabel="", ylabel="")
    res = float(data.attrs.get("res_km", 100.0)) * 1e3
    rng = np.random.default_rng(seed)
    segs, seg_vals, dots = [], [], []
    for _, r in routes_df.sort_values(["route_id", "date"], kind="stable").groupby("route_id", sort=True):
        xy = r[["x", "y"]].to_numpy(float) + rng.uniform(-jitter, jitter, 2) * res
        season = season_colour_values(r["date"])
        segs += [xy[i:i + 2] for i in range(len(xy) - 1)]
        seg_vals += list(season[:-1])
        cell = r["i"].to_numpy()  # 1-based cell, as in BirdFlowR Routes tables
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        lengths = np.diff(np.r_[starts, len(cell)])
        dots += [(xy[s, 0], xy[s, 1], season[s], n) for s, n in zip(starts, lengths, strict=True)]
        ax.plot(*xy[0], "o", mfc="none", mec="black", ms=5, mew=0.8, zorder=5)
    norm = Normalize(0.0, 1.0)
    lc = LineCollection(segs, cmap=SEASON_CMAP, norm=norm, linewidths=1.1, alpha=0.9, zorder=4)
    lc.set_array(np.asarray(seg_vals))
    ax.add_collection(lc)
    if dots:
        d = np.asarray(dots)
        ax.scatter(d[:, 0], d[:, 1], c=d[:, 2], s=6 + 6 * d[:, 3], cmap=SEASON_CMAP, norm=norm,
                   edgecolors="black", linewidths=0.3, zorder=4.5)
    cb = fig.colorbar(lc, ax=ax, shrink=0.7, label="date (dot size: weeks in the cell)")
    months = pd.date_range("2001-01-01", periods=12, freq="MS")
    cb.set_ticks(season_colour_values(months), labels=[f"{m:%b}" for m in months])
    n = routes_df["route_id"].nunique()
    first, last = pd.Timestamp(routes_df["date"].min()), pd.Timestamp(routes_df["date"].max())
    ax.set_title(f"{species_label(model)}: {n} sampled routes from {first:%b} {first.day}, "
                 f"{round((last - first).days / 7)} weeks", fontsize=11)
    return _finish(fig, path, dpi)


def animate_year(model: BirdFlowModel, path: str | os.PathLike, basemap: bool = True,
                 dpi: int = 90, fps: float = 4.0) -> Path:
    """Animated GIF, one frame per model week: model (left) vs S&T (right)."""
    data = model.data
    n_weeks = model.index.n_weeks
    model_d, st_d = model.distrs(), data["distr"].values
    norm = PowerNorm(0.5, vmin=0.0, vmax=float(max(model_d.max(), st_d.max())))
    fig = Figure(figsize=(2 * panel_width(model.data, 3.8) + 2.0, 4.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 2)
    ims, moving = [], []
    for ax, label in zip(axes, ("BirdFlow model", "eBird S&T"), strict=True):
        _map_panel(ax, model, basemap)
        im, borders = _cells(ax, model, np.zeros(model.n_cells), 0, norm, basemap)
        ims.append(im)
        moving += [(ax, a) for a in [im, *borders]]
        ax.set_title(label, fontsize=10)
    fig.colorbar(ims[0], ax=list(axes), shrink=0.8, label="share of population (sqrt scale)")
    title = fig.suptitle(f"{species_label(model)}: {_week_label(model, 0)}")
    # Lay out and draw the static parts once, then per week redraw only the cells, the borders
    # over them and the title on that background (redrawing everything is ~20x slower).
    for _, a in moving + [(fig, title)]:
        a.set_animated(True)
    canvas = FigureCanvasAgg(fig)  # attached late: geopandas' draw_idle calls would draw it
    canvas.draw()
    fig.set_layout_engine("none")
    background = canvas.copy_from_bbox(fig.bbox)
    frames = []
    for t in range(n_weeks):
        for im, d in zip(ims, (model_d[t], st_d[t]), strict=True):
            im.set_data(distr_image(data, d, t))
        title.set_text(f"{species_label(model)}: {_week_label(model, t)}")
        canvas.restore_region(background)
        for ax, a in moving:
            ax.draw_artist(a)
        fig.draw_artist(title)
        rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
        frames.append(rgb.quantize(colors=255, method=Image.Quantize.FASTOCTREE))
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(1000 / fps), loop=0, optimize=False)
    return Path(path)


def plot_loss(history: dict | pd.DataFrame | BirdFlowModel, path: str | os.PathLike | None = None, dpi: int = 110, *,
              ax=None) -> Figure:
    """Log-scale curves of the total, obs, dist and ent loss terms against training step.

    Terms that are negative throughout (an entropy bonus) are drawn negated as ``-name``;
    a term that changes sign is drawn as ``|name|``.
    """
    if isinstance(history, BirdFlowModel):  # bf.plot_loss(m): the model's own history
        history = history.loss_history
    df = pd.DataFrame({k: np.asarray(v, float) for k, v in history.items()}) \
        if isinstance(history, dict) else history.copy()
    terms = [t for t in LOSS_TERMS if t in df]
    if not terms or not len(df):
        raise DataError(f"loss history has none of {list(LOSS_TERMS)} (columns: {list(df.columns)}); "
                        "pass the run's loss_history.csv or model.loss_history")
    step = df["step"].to_numpy() if "step" in df else np.arange(len(df))
    fig, ax = _new_axes(ax, (7, 4.2))
    for term in terms:
        v = df[term].to_numpy(float)
        label = term
        if np.all(v[np.isfinite(v)] <= 0):
            v, label = -v, f"-{term}"
        elif np.any(v < 0):
            v, label = np.abs(v), f"|{term}|"
        ax.plot(step, np.where(v > 0, v, np.nan), label=label, lw=2.0 if term == "total" else 1.2)
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="loss (log scale)", title="Training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _finish(fig, path, dpi)


def plot_fit_per_week(per_week_metrics: dict[str, np.ndarray],
                      path: str | os.PathLike | None = None, weeks=None,
                      ylabel: str = "Pearson r, model vs S&T", title: str = "Fit per week",
                      dpi: int = 110, *, ax=None) -> Figure:
    """One curve per model of a per-week fit metric (e.g. distribution correlation)."""
    fig, ax = _new_axes(ax, (7, 4))
    for label, values in per_week_metrics.items():
        v = np.asarray(values, float)
        x = np.asarray(weeks) if weeks is not None else np.arange(1, len(v) + 1)
        ax.plot(x, v, marker="o", ms=3, lw=1.4, label=label)
    ax.set(xlabel="S&T week", ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _finish(fig, path, dpi)
