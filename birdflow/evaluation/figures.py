"""The figures of a run dir (``birdflow maps``): distributions, routes, a year, loss, fit.

Everything is written into ``<run>/figures/``; the run's files are read through
:mod:`birdflow.runs`, so this works from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from birdflow.evaluation.maps import (
    LOSS_TERMS,
    animate_year,
    plot_distributions,
    plot_fit_per_week,
    plot_loss,
    plot_routes,
)
from birdflow.evaluation.metrics import weekly_distr_cor
from birdflow.evaluation.routes import ROUTES_CSV, sample_routes
from birdflow.model.fitted import load_model
from birdflow.runs import read_config, read_history_csv, run_path

FIGURES = "figures"


def write_run_figures(run_dir: str | os.PathLike, n_routes: int = 20, dpi: int = 110) -> list[Path]:
    """Write the run's figures into ``<run>/figures/`` and return their paths.

    Routes come from the run's ``routes.csv`` (``birdflow routes``) when there is one, else
    ``n_routes`` are sampled; the per-week fit shows the true chain too when the run has one.
    """
    run = Path(run_dir)
    model = load_model(run)
    saved = read_config(run)  # the resolved training config knows the species' name
    name = OmegaConf.select(saved, "species.common_name") if saved is not None else None
    if name:
        model.data.attrs["common_name"] = str(name)
    fig_dir = run / FIGURES
    weeks = model.data["week"].values
    picks = weeks[np.linspace(0, len(weeks) - 1, 5).round().astype(int)[:4]]
    if len(weeks) == 52:
        picks = np.array([2, 15, 28, 41])  # mid-Jan, mid-Apr, mid-Jul, mid-Oct
    out = [fig_dir / "distributions.png"]
    plot_distributions(model, picks, out[-1], dpi=dpi)
    if (run / ROUTES_CSV).exists():
        routes = pd.read_csv(run / ROUTES_CSV, parse_dates=["date"])
        keep = routes["route_id"].drop_duplicates().iloc[:n_routes]
        routes = routes[routes["route_id"].isin(keep)]
    else:
        routes = sample_routes(model, n_routes, int(weeks[0]), model.n_transitions)
    out.append(fig_dir / "routes.png")
    plot_routes(model, routes, out[-1], dpi=dpi)
    out.append(animate_year(model, fig_dir / "year.gif"))
    saved_history = read_history_csv(run)
    history = pd.DataFrame(saved_history) if saved_history else model.loss_history
    if len(history) and any(t in history for t in LOSS_TERMS):
        out.append(fig_dir / "loss.png")
        plot_loss(history, out[-1], dpi=dpi)
    fits = {"model": weekly_distr_cor(model)}
    truth = run_path(run, "truth")
    if truth is not None and truth.exists():
        fits["true chain"] = weekly_distr_cor(load_model(truth))
    out.append(fig_dir / "fit_per_week.png")
    plot_fit_per_week(fits, out[-1], weeks=weeks, dpi=dpi)
    return out
