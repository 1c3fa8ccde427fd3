"""``birdflow train`` / ``python -m birdflow.train [species=<name>] [loss=l2|w2] [overrides]``.

Composes ``conf/train.yaml`` and runs :func:`birdflow.training.loop.train`, then writes the
run's metrics, figures and exports (:func:`birdflow.api.after_training`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from birdflow.api import after_training
from birdflow.sweeps.sweep import check_fresh_run_dir, job_failure
from birdflow.training.loop import train


@hydra.main(version_base="1.3", config_path="pkg://birdflow.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        check_fresh_run_dir(cfg)  # a sweep never overwrites another's run dirs
        train(cfg, after=after_training)
    except BaseException as e:  # recorded as status=failed in run.json, then re-raised
        replacement = job_failure(cfg, e)
        if replacement is e:
            raise
        raise replacement from (None if isinstance(replacement, SystemExit) else e)


if __name__ == "__main__":
    main()
