"""``birdflow maps run=<run dir> [n_routes=20] [dpi=110]``: the figures of a fitted model.

Also ``python -m birdflow.maps``. Writes into ``<run>/figures/``: model-vs-S&T distributions,
routes on a basemap, an animated year (GIF), the loss curve and the per-week fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from birdflow.app import command
from birdflow.evaluation.maps import (
    LOSS_TERMS,
    animate_year,
    plot_distributions,
    plot_fit_per_week,
    plot_loss,
    plot_routes,
)
from birdflow.evaluation.metrics import weekly_distr_cor
from birdflow.evaluation.routes import sample_routes
from birdflow.model.fitted import load_model


@command("maps", "birdflow maps")
def main(cfg: DictConfig) -> list[Path]:
    run = Path(cfg.run)
    model = load_model(run)
    if (run / "config.yaml").exists():  # the resolved training config knows the species' name
        name = OmegaConf.select(OmegaConf.load(run / "config.yaml"), "species.common_name")
        if name:
            model.data.attrs["common_name"] = str(name)
    dpi, n_routes, fig_dir = int(cfg.dpi), int(cfg.n_routes), run / "figures"
    weeks = model.data["week"].values
    picks = weeks[np.linspace(0, len(weeks) - 1, 5).round().astype(int)[:4]]
    if len(weeks) == 52:
        picks = np.array([2, 15, 28, 41])  # mid-Jan, mid-Apr, mid-Jul, mid-Oct
    out = [fig_dir / "distributions.png"]
    plot_distributions(model, picks, out[-1], dpi=dpi)
    if (run / "routes.csv").exists():
        routes = pd.read_csv(run / "routes.csv", parse_dates=["date"])
        keep = routes["route_id"].drop_duplicates().iloc[:n_routes]
        routes = routes[routes["route_id"].isin(keep)]
    else:
        routes = sample_routes(model, n_routes, int(weeks[0]), model.n_transitions)
    out.append(fig_dir / "routes.png")
    plot_routes(model, routes, out[-1], dpi=dpi)
    out.append(animate_year(model, fig_dir / "year.gif"))
    history = pd.read_csv(run / "loss_history.csv") if (run / "loss_history.csv").exists() \
        else model.loss_history
    if len(history) and any(t in history for t in LOSS_TERMS):
        out.append(fig_dir / "loss.png")
        plot_loss(history, out[-1], dpi=dpi)
    fits = {"model": weekly_distr_cor(model)}
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    if meta.get("truth") and Path(meta["truth"]).exists():
        fits["true chain"] = weekly_distr_cor(load_model(meta["truth"]))
    out.append(fig_dir / "fit_per_week.png")
    plot_fit_per_week(fits, out[-1], weeks=weeks, dpi=dpi)
    for p in out:
        print(f"wrote {p}")
    return out


if __name__ == "__main__":
    main()
