"""``birdflow preprocess species=<name> [species.res_km=...]``: S&T raster -> BirdFlowData.

Also ``python -m birdflow.preprocess``. Prints the summary and the cached NetCDF's path.
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.data.preprocess import summary
from birdflow.synthetic import load_or_preprocess


@command("preprocess", "birdflow preprocess")
def main(cfg: DictConfig):
    ds, path = load_or_preprocess(cfg.species, cfg.data,
                                  (cfg.get("model") or {}).get("neighbourhood_km"))
    print(summary(ds, path))
    return path


if __name__ == "__main__":
    main()
