"""``birdflow preprocess`` / ``python -m birdflow.preprocess species=<name> [species.res_km=...]``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from birdflow.data.preprocess import summary
from birdflow.errors import BirdFlowError
from birdflow.synthetic import load_or_preprocess


@hydra.main(version_base="1.3", config_path="pkg://birdflow.conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    try:
        ds, path = load_or_preprocess(cfg.species, cfg.data)
    except BirdFlowError as e:
        sys.exit(f"error: {e}")
    print(summary(ds, path))


if __name__ == "__main__":
    main()
