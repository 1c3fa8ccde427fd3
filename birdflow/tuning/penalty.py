"""An optional S&T-fit penalty for the outer loss (``tune.fit_penalty``).

Tuning on the tracks alone can trade the fit to the S&T distributions for log-likelihood (on the
synthetic species the tuned L2 model's weakest weekly correlation was 0.944 against 0.972 for the
grid's best). BirdFlowPipeline guards against that by *selecting* only models whose distribution
correlation is high enough; here the same rule is a differentiable penalty added to the outer loss:

``penalty(w) = weight * sum_t max(0, min_cor - cor_t(w))^2``

with ``cor_t`` the Pearson correlation of the model's week-t distribution and the S&T target over
week t's active cells (the ``distr_cor`` of evaluation). It is zero while every week is above
``min_cor``, so it changes nothing for models that already fit, and it enters the hypergradient
through ``w*(θ)`` like the log-likelihood does.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.model import markov


@dataclass(frozen=True)
class FitPenalty:
    """``tune.fit_penalty``: ``min_cor`` None switches it off."""

    min_cor: float | None = None
    weight: float = 10.0


def weekly_cor(mu: jax.Array, targets: jax.Array, valid: np.ndarray) -> jax.Array:
    """(W,) Pearson correlation per week over the valid slots; mu, targets (W, n_max)."""
    m = jnp.asarray(valid, mu.dtype)
    n = m.sum(axis=1, keepdims=True)
    da = (mu - (mu * m).sum(1, keepdims=True) / n) * m
    db = (targets - (targets * m).sum(1, keepdims=True) / n) * m
    den = jnp.sqrt((da**2).sum(1) * (db**2).sum(1))
    return (da * db).sum(1) / jnp.maximum(den, jnp.finfo(mu.dtype).tiny)


def make_fit_penalty(index: markov.WeekIndex, targets: jax.Array, settings: FitPenalty):
    """``params -> (penalty, weekly correlations)`` over the model's weeks (each week once)."""
    weeks = np.arange(index.n_transitions if index.cyclic else index.n_weeks)
    valid = index.valid[index.week_of_marginal()[weeks]]
    tgt = targets[weeks]

    def penalty(params: dict) -> tuple[jax.Array, jax.Array]:
        mu, _ = markov.marginals(params, index)
        cor = weekly_cor(mu[weeks], tgt, valid)
        if settings.min_cor is None:
            return jnp.zeros((), mu.dtype), cor
        gap = jnp.maximum(settings.min_cor - cor, 0.0)
        return settings.weight * jnp.sum(gap**2), cor

    return penalty
