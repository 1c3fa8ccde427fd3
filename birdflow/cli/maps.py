"""``birdflow maps run=<run dir> [n_routes=20] [dpi=110]``: the figures of a fitted model.

Also ``python -m birdflow.maps``. Writes into ``<run>/figures/``: model-vs-S&T distributions,
routes on a basemap, an animated year (GIF), the loss curve and the per-week fit
(:func:`birdflow.evaluation.figures.write_run_figures`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.cli.settings import MapsSettings, settings
from birdflow.evaluation.figures import write_run_figures


@command("maps", "birdflow maps")
def main(cfg: DictConfig) -> list[Path]:
    s = settings(cfg, MapsSettings)
    out = write_run_figures(s.run, n_routes=s.n_routes, dpi=s.dpi)
    for p in out:
        print(f"wrote {p}")
    return out


if __name__ == "__main__":
    main()
