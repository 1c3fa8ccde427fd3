"""The W2 variants of the training-step benchmark (``python -m birdflow.bench --variants``).

Each variant is the shipped W2 configuration (``conf/loss/w2.yaml``) with the listed
``loss.w2`` settings changed, so a row shows what one setting costs or saves.
"""

from __future__ import annotations

# W2 speed settings switched off one at a time ("plain" = all off: the first W2 solver).
VARIANTS = {
    "plain": {"cache_target_self": False, "symmetric": False, "shared_cost": False, "week_batch": 0,
              "momentum": 1.0, "grid_kernel": False},
    "no-cache": {"cache_target_self": False},
    "no-symmetric": {"symmetric": False},
    "gathered-cost": {"shared_cost": False, "grid_kernel": False},
    "vmap-weeks": {"week_batch": 0},
    "scan-weeks": {"week_batch": 1},
    "cold": {"warm_start": False},
    "inner-5": {"inner_iterations": 5},
    "no-momentum": {"momentum": 1.0},
    # amortised Sinkhorn: converged = a full solve to threshold every step
    "converged": {"iterations_per_step": None},
    "amortised-5": {"iterations_per_step": 5},
    "amortised-10": {"iterations_per_step": 10},
    "amortised-20": {"iterations_per_step": 20},
    # the W2 ground cost from coordinates inside Sinkhorn vs the (n_cells, n_cells) matrix
    "online": {"online_cost": True, "grid_kernel": False},
    "matrix": {"online_cost": False, "grid_kernel": False},
    # the kernel one grid axis at a time (on whenever it applies and costs less)
    "grid": {"grid_kernel": True},
}
