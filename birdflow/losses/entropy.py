"""Entropy pieces of the BirdFlow objective, safe at zero-mass padding entries.

The objective rewards ``sum_t H(M_t) - sum_t H(mu_t)`` (BirdFlowPy's ``ent`` term: the
conditional entropy of the transitions, which favours spreading birds out), with
``H(p) = -sum p log p``. Padding slots and masked transitions carry exactly zero mass;
``0 log 0`` is taken as 0 with a finite (zero) gradient by guarding the logarithm.

Sparse (neighbourhood) joints (T, n_max, K) hold the same non-zero entries as their dense
(T, n_max, n_max) form, so :func:`joint_entropy` takes either layout unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from birdflow.types import Marginals, WeeklyDistr

PerWeek = Float[Array, "week"]  # one value per one-way marginal
PerTransition = Float[Array, "transition"]  # one value per transition


def entropy(p: jax.Array, axes: tuple[int, ...] = (-1,)) -> jax.Array:
    """Shannon entropy ``-sum p log p`` (nats) over ``axes``; zero entries contribute 0.

    The double ``where`` keeps the gradient finite where ``p == 0`` (the untaken branch sees
    ``log 1``), so padding never produces NaN. Entries below the square root of the smallest
    normal float (1.5e-154 in float64, 1.1e-19 in float32) count as zero too (their
    ``p log p`` is below 1e-150, resp. 5e-18): a second derivative (a Hessian-vector product)
    divides by ``p²``, which underflows there and would give ``0 · inf`` = NaN.
    """
    positive = p > np.sqrt(jnp.finfo(p.dtype).tiny)
    safe = jnp.where(positive, p, 1.0)
    return -jnp.sum(jnp.where(positive, p * jnp.log(safe), 0.0), axis=axes)


def marginal_entropy(mu: WeeklyDistr) -> PerWeek:
    """H(mu_t) for each one-way marginal; (n_transitions + 1, n_max) -> (n_transitions + 1,)."""
    return entropy(mu, axes=(-1,))


def joint_entropy(M: Marginals) -> PerTransition:
    """H(M_t) of each joint (two-way) marginal; (T, n_max, n_max) or sparse (T, n_max, K) -> (T,)."""
    return entropy(M, axes=(-2, -1))


def entropy_term(mu: WeeklyDistr, M: Marginals):
    """BirdFlowPy's ``ent``: ``sum_t H(M_t) - sum_{t=1..T+1} H(mu_t)`` (a scalar, nats).

    The objective *subtracts* ``ent_weight`` times this value.
    """
    return joint_entropy(M).sum() - marginal_entropy(mu).sum()
