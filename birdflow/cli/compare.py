"""``birdflow compare [species=<name>] [optim.steps=...] [tracks=<csv>] [runs.l2=<dir> runs.w2=<dir>]``.

Also ``python -m birdflow.compare``. Trains (or reuses) an L2 and a W2 model on the same data
and seed, evaluates both and writes one report (:func:`birdflow.evaluation.compare.compare`).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.evaluation.compare import compare


@command("compare", "birdflow compare")
def main(cfg: DictConfig) -> Path:
    report_dir = Path(cfg.run_dir) if cfg.get("run_dir") else Path(HydraConfig.get().runtime.output_dir)
    return compare(cfg, report_dir)


if __name__ == "__main__":
    main()
