"""``birdflow train [species=<name>] [loss=l2|w2] [optim.steps=...] [resume=<run dir>]``.

Also ``python -m birdflow.train``. Composes ``conf/train.yaml``, fits the model
(:func:`birdflow.training.loop.train`) and writes the run's metrics, figures and exports
(:func:`birdflow.api.after_training`). ``-m`` runs a sweep (docs/guide/sweeps.md).
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from birdflow.api import after_training, apply_weights
from birdflow.cli.command import command
from birdflow.sweeps.sweep import check_fresh_run_dir, job_failure
from birdflow.training.loop import RunResult, train
from birdflow.training.resume import resumed_config


@command("train", "birdflow train")
def main(cfg: DictConfig) -> RunResult:
    try:
        check_fresh_run_dir(cfg)  # a sweep never overwrites another's run dirs
        cfg = resumed_config(cfg, HydraConfig.get().overrides.task)  # resume=<dir>: checked
        return train(apply_weights(cfg), after=after_training)
    except BaseException as e:  # recorded as status=failed in run.json, then re-raised
        replacement = job_failure(cfg, e)
        if replacement is e:
            raise
        raise replacement from e


if __name__ == "__main__":
    main()
