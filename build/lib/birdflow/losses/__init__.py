"""Loss terms of the BirdFlow objective: location (L2, entropic W2), distance, entropy."""

from birdflow.losses.objective import (
    LossConfig,
    Problem,
    W2Config,
    init_loss_state,
    make_problem,
    objective,
)

__all__ = ["LossConfig", "Problem", "W2Config", "init_loss_state", "make_problem", "objective"]
