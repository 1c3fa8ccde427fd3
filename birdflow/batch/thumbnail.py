"""A species' thumbnail for the catalog: its model's breeding and nonbreeding distributions.

Two small panels (S&T weeks 26 and 3, or the first and middle week of a truncated season) of
the fitted model on its grid, no basemap, ~10 KB as PNG, so ``index.html`` can embed one per
species and stay self-contained.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np

from birdflow.io import atomic_path

WEEKS = (26, 3)  # mid-breeding and mid-nonbreeding on the S&T calendar


def _panel_weeks(model) -> list[int]:
    weeks = [int(w) for w in model.data["week"].values]
    chosen = [weeks.index(w) for w in WEEKS if w in weeks]
    return chosen if len(chosen) == 2 else [0, len(weeks) // 2]


def write_thumbnail(model, path: str | os.PathLike) -> Path:
    """Write the thumbnail PNG (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    from birdflow.evaluation.basemap import distr_image, grid_extent

    pos = _panel_weeks(model)
    values = [model.distr_at(p) for p in pos]
    norm = PowerNorm(0.5, vmin=0.0, vmax=max(float(np.max(v)) for v in values))
    fig, axes = plt.subplots(1, 2, figsize=(2.6, 1.5), dpi=80)
    for ax, p, v in zip(axes, pos, values, strict=True):
        ax.imshow(distr_image(model.data, v, p), extent=grid_extent(model.data), origin="upper",
                  cmap="viridis", norm=norm, interpolation="nearest")
        ax.set_facecolor("#eeeeee")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"week {int(model.data['week'].values[p])}", fontsize=7)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def data_uri(path: str | os.PathLike) -> str:
    """The PNG at ``path`` as a ``data:`` URI (empty string when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
