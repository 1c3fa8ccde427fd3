"""``birdflow download species=<name>``: fetch a species' S&T rasters (needs ``EBIRDST_KEY``).

Also ``python -m birdflow.download``. Prints each file's path.
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.data.download import download_species


@command("download", "birdflow download")
def main(cfg: DictConfig):
    paths = download_species(cfg.species, cfg.data)
    for metric, path in paths.items():
        print(f"{metric}: {path}")
    return paths


if __name__ == "__main__":
    main()
