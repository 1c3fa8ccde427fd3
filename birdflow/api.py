"""The Python front door (grows into ``bf.fit``, ``bf.load_model``, ... in the package issue).

Helpers shared by the commands and the Python API live here so that both do the same work.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from birdflow.model.fitted import BirdFlowModel


def after_training(cfg: DictConfig, run_dir: Path, model: BirdFlowModel, history: dict) -> None:
    """What a finished run also writes into its directory: loss curve, metrics, BirdFlowR export."""
    if cfg.get("maps", True):
        from birdflow.evaluation.maps import plot_loss

        plot_loss(history, run_dir / "loss_curve.png")
    if cfg.get("evaluate", True):
        from birdflow.evaluation.evaluate import evaluate_run

        evaluate_run(run_dir, model=model)
    if cfg.get("export", {}).get("hdf5", False):
        from birdflow.export import export_birdflowr

        export_birdflowr(model, run_dir=run_dir)
