"""``birdflow download`` / ``python -m birdflow.download species=<name>`` (needs EBIRDST_KEY)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from birdflow.data.download import download_species
from birdflow.errors import BirdFlowError


@hydra.main(version_base="1.3", config_path="pkg://birdflow.conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    try:
        paths = download_species(cfg.species, cfg.data)
    except BirdFlowError as e:
        sys.exit(f"error: {e}")
    for metric, path in paths.items():
        print(f"{metric}: {path}")


if __name__ == "__main__":
    main()
