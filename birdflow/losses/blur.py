"""The entropic blur of the W2 loss in grid units, and epsilon scaling for cold solves.

``loss.w2.epsilon_cells`` is epsilon in one-cell costs: the solver's epsilon (in the normalised
cost units of :mod:`birdflow.losses.ground_cost`, largest cost 1) is ``epsilon_cells`` times
the normalised cost of moving one cell, ``Problem.w2_unit``. With the ``sqeuclidean`` cost the
Gibbs kernel ``exp(-C / epsilon)`` weighs a move of d cells by ``exp(-d^2 / epsilon_cells)``:
a blur of about ``sqrt(epsilon_cells)`` cells, whatever the resolution or the range's size.
(Relative to the largest cost, as before, the same setting was 0.04 one-cell costs on a 5-cell
range and ~60 on a continental one.)

A cold Sinkhorn solve at a small epsilon needs O(largest cost / epsilon) iterations, i.e.
O(range in cells ^ 2 / epsilon_cells): hundreds of thousands on a continental range.
:class:`AnnealedEpsilon` starts such a solve at the largest cost and divides epsilon by
``1 / ANNEAL_DECAY`` every iteration down to the target (epsilon scaling), which converges in a
few hundred iterations at any range; warm-started solves, and targets above 1 % of the largest
cost (which converge cold in about a hundred iterations), keep the target from the start.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import epsilon_scheduler

ANNEAL_DECAY = 0.9  # epsilon multiplied by this every iteration of a cold solve
ANNEAL_START = 1.0  # a cold solve starts at the largest normalised cost
ANNEAL_BELOW = 1e-2  # ... when its target is below this: above, it converges in ~100 iterations
MIXING_CELLS = 0.3  # below this many one-cell costs neighbouring cells hardly mix (exp(-3.3))


@jax.tree_util.register_pytree_node_class
class AnnealedEpsilon(epsilon_scheduler.Epsilon):
    """Epsilon ``max(start * decay^it, target)`` at Sinkhorn iteration ``it``.

    ``start`` is a traced value, so one compiled solve anneals the weeks that start cold
    (``start`` > ``target``) and keeps the target for warm-started ones (``start`` = ``target``). The marginal error is always measured with the target's kernel, so a solve
    never stops at an intermediate epsilon unless its potentials already fit the target's
    marginals.
    """

    def __init__(self, target, start, decay: float = ANNEAL_DECAY):
        super().__init__(target=target, init=1.0, decay=decay)
        self.start = start

    def __call__(self, it):
        if it is None:
            return self.target
        return jnp.maximum(self.start * self.decay ** it, self.target)

    def tree_flatten(self):
        return (self.target, self.start), {"decay": self.decay}

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        return cls(*children, **aux_data)


def annealed(epsilon, max_iterations: int, cold=True) -> AnnealedEpsilon:
    """Epsilon for a solve of at most ``max_iterations``: when ``cold`` (traced bool), the
    target is below :data:`ANNEAL_BELOW` and the anneal fits in half of ``max_iterations``,
    from :data:`ANNEAL_START` down by :data:`ANNEAL_DECAY` per iteration; else the target
    (a solve cut short mid-anneal would leave potentials of a much larger blur)."""
    epsilon = jnp.asarray(epsilon)
    steps = jnp.log(ANNEAL_START / epsilon) / math.log(1.0 / ANNEAL_DECAY)
    cold = cold & (epsilon < ANNEAL_BELOW) & (steps <= 0.5 * max_iterations)
    return AnnealedEpsilon(epsilon, jnp.where(cold, ANNEAL_START, epsilon))


def cold_schedule(epsilon, f0: jax.Array, g0: jax.Array, max_iterations: int) -> AnnealedEpsilon:
    """:func:`annealed` for one week's solve: cold when the warm start (``f0``, ``g0``) is all
    zeros."""
    return annealed(jnp.asarray(epsilon, f0.dtype), max_iterations,
                    jnp.all(f0 == 0) & jnp.all(g0 == 0))


def epsilon_at(cfg, unit, step) -> jax.Array:
    """Epsilon (normalised cost units) at training ``step`` for ``loss.w2`` settings ``cfg``.

    ``unit`` is the normalised one-cell cost (``Problem.w2_unit``). With
    ``epsilon_cells_start`` set, log-linear from it to ``epsilon_cells`` over
    ``epsilon_decay_steps`` steps.
    """
    target = cfg.epsilon_cells
    if cfg.epsilon_cells_start is None or cfg.epsilon_decay_steps <= 0:
        return jnp.asarray(target * unit)
    r = jnp.clip(jnp.asarray(step) / cfg.epsilon_decay_steps, 0.0, 1.0)
    cells = jnp.exp((1.0 - r) * np.log(cfg.epsilon_cells_start) + r * np.log(target))
    return cells * unit


def describe(epsilon_cells: float, unit: float) -> str:
    """``epsilon_cells`` for a message: in one-cell costs, as a blur in cells, and absolute."""
    return (f"loss.w2.epsilon_cells={epsilon_cells:g} (a blur of about "
            f"{math.sqrt(epsilon_cells):.2g} cells; epsilon {epsilon_cells * unit:.3g} of the "
            f"largest cost, one-cell cost {unit:.3g})")
