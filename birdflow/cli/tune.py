"""``birdflow tune [species=<name>] [loss=l2|w2] [tracks=<csv>] [tune.steps=...] [resume=<tune dir>]``.

Also ``python -m birdflow.tune``. Composes ``conf/tune.yaml`` (train's config plus ``tune.*``),
learns the loss weights by implicit differentiation (:func:`birdflow.tuning.outer.tune`) and
gives the final model train's metrics and figures (:func:`birdflow.api.after_training`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.api import after_training
from birdflow.cli.command import command
from birdflow.tuning.outer import TuneResult, tune


@command("tune", "birdflow tune")
def main(cfg: DictConfig) -> TuneResult:
    return tune(cfg, after=after_training)


if __name__ == "__main__":
    main()
