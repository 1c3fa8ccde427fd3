"""``birdflow routes run=<run dir> [n=100] [start=..] [end=..] [direction=..] [season=..] ...``.

Also ``python -m birdflow.routes``. Samples flight paths from a fitted model, forward or
backward in time, and writes ``routes.csv`` (BirdFlowR's Routes columns; the tracks reader and
``birdflow evaluate tracks=`` read it), ``routes.geojson`` (lines), ``routes_points.geojson``
(one point per route and week with its ``time``) and ``route_stats.csv`` into the run dir
(options: :class:`birdflow.cli.settings.RoutesSettings`; :mod:`birdflow.evaluation.routes`
does the work).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.cli.settings import RoutesSettings, settings
from birdflow.errors import ConfigError
from birdflow.evaluation.routes import sample_routes, write_run_routes
from birdflow.model.fitted import load_model


def _when(value, key: str):
    """A date string or an S&T week number from the config (Hydra gives ints or strings)."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if value.strip().isdigit() else value
    raise ConfigError(f"{key}={value!r}: give a date (YYYY-MM-DD) or an S&T week number 1..52")


def _points(lon, lat):
    """None, one (lon, lat) or a list of them from lon=/lat= (numbers or equal-length lists)."""
    if (lon is None) != (lat is None):
        raise ConfigError("lon/lat: give both lon=<degrees> and lat=<degrees>, or neither")
    if lon is None:
        return None
    lons = list(lon) if isinstance(lon, list | tuple) else [lon]
    lats = list(lat) if isinstance(lat, list | tuple) else [lat]
    if len(lons) != len(lats):
        raise ConfigError(f"lon/lat: {len(lons)} longitudes but {len(lats)} latitudes; give "
                          "one latitude per longitude, e.g. lon=[-90,-85] lat=[30,35]")
    try:
        pts = [(float(a), float(b)) for a, b in zip(lons, lats, strict=True)]
    except (TypeError, ValueError):
        raise ConfigError(f"lon={lon}, lat={lat}: must be numbers (degrees)") from None
    return pts[0] if len(pts) == 1 else pts


@command("routes", "birdflow routes")
def main(cfg: DictConfig) -> dict:
    s = settings(cfg, RoutesSettings)
    run = Path(s.run)
    model = load_model(run)
    start = _when(s.start if s.start is not None else s.start_week, "start")
    df = sample_routes(model, s.n, start, s.weeks, _points(s.lon, s.lat), s.seed,
                       end=_when(s.end, "end"), direction=s.direction, season=s.season,
                       season_buffer=s.season_buffer, from_marginals=s.start_from == "model")
    written, summary = write_run_routes(df, run)
    for key, value in summary.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    print("wrote " + ", ".join(map(str, written)))
    return summary


if __name__ == "__main__":
    main()
