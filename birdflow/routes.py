"""``birdflow routes run=<run dir> [n=100] [start_week=..] [weeks=..] [lon=.. lat=..] [seed=0]``.

Also ``python -m birdflow.routes``. Samples flight paths from a fitted model and writes
``routes.csv``, ``routes.geojson`` and ``route_stats.csv`` into the run dir (options in
``conf/routes.yaml``; :mod:`birdflow.evaluation.routes` does the work).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from birdflow.app import command, numbers
from birdflow.errors import ConfigError
from birdflow.evaluation.routes import route_stats, sample_routes, write_routes
from birdflow.io import atomic_path
from birdflow.model.fitted import load_model


@command("routes", "birdflow routes")
def main(cfg: DictConfig) -> dict:
    numbers(cfg, "start_week", "weeks", "lon", "lat")
    run = Path(cfg.run)
    model = load_model(run)
    weeks = model.data["week"].values
    start_week = int(weeks[0]) if cfg.start_week is None else int(cfg.start_week)
    if start_week not in weeks:
        raise ConfigError(f"start_week={start_week}: not one of the model's weeks "
                          f"({int(weeks[0])}..{int(weeks[-1])})")
    position = int(np.flatnonzero(weeks == start_week)[0])
    n_weeks = cfg.weeks if cfg.weeks is not None else \
        model.n_transitions - (0 if model.cyclic else position)
    if (cfg.lon is None) != (cfg.lat is None):
        raise ConfigError("lon/lat: give both lon=<degrees> and lat=<degrees>, or neither")
    if int(cfg.n) <= 0:
        raise ConfigError(f"n={cfg.n}: must be a positive number of routes")
    start = None if cfg.lon is None else (float(cfg.lon), float(cfg.lat))
    df = sample_routes(model, int(cfg.n), start_week, int(n_weeks), start, int(cfg.seed))
    write_routes(df, run / "routes.csv", run / "routes.geojson")
    per_route, summary = route_stats(df)
    with atomic_path(run / "route_stats.csv") as tmp:
        per_route.to_csv(tmp)
    for key, value in summary.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(f"wrote {run / 'routes.csv'}, {run / 'routes.geojson'}, {run / 'route_stats.csv'}")
    return summary


if __name__ == "__main__":
    main()
