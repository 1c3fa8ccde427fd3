"""``birdflow tune`` / ``python -m birdflow.tune [species=<name>] [loss=l2|w2] [tracks=<csv>]``.

Composes ``conf/tune.yaml`` (train's config plus ``tune.*``) and runs
:func:`birdflow.tuning.outer.tune`; the final model gets train's metrics and figures
(:func:`birdflow.api.after_training`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from birdflow.api import after_training
from birdflow.tuning.outer import tune


@hydra.main(version_base="1.3", config_path="pkg://birdflow.conf", config_name="tune")
def main(cfg: DictConfig) -> None:
    tune(cfg, after=after_training)


if __name__ == "__main__":
    main()
