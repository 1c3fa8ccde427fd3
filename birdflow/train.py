"""``birdflow train [species=<name>] [loss=l2|w2] [optim.steps=...] [resume=<run dir>]``.

Also ``python -m birdflow.train``. Composes ``conf/train.yaml``, fits the model
(:func:`birdflow.training.loop.train`) and writes the run's metrics, figures and exports
(:func:`birdflow.api.after_training`). ``-m`` runs a sweep (README, "Sweeps on a cluster").
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.api import after_training, apply_weights
from birdflow.app import command
from birdflow.sweeps.sweep import check_fresh_run_dir, job_failure
from birdflow.training.loop import RunResult, train


@command("train", "birdflow train")
def main(cfg: DictConfig) -> RunResult:
    try:
        check_fresh_run_dir(cfg)  # a sweep never overwrites another's run dirs
        return train(apply_weights(cfg), after=after_training)
    except BaseException as e:  # recorded as status=failed in run.json, then re-raised
        replacement = job_failure(cfg, e)
        if replacement is e:
            raise
        raise replacement from e


if __name__ == "__main__":
    main()
