"""Chain maths on the sparse (neighbourhood) layout; :mod:`birdflow.model.markov` dispatches here.

With ``index.nbr`` of shape (n_transitions, n_max, K) (``nbr[t, i, k]`` = the week-(t+1) slot
of the k-th cell reachable from week-t slot i, -1 for padding), the logits ``Z`` and the
joints ``M`` are (n_transitions, n_max, K), paired entry by entry with ``nbr``. Row i of
transition t is a softmax over its valid neighbours only (padding logits ``MASKED_LOGIT``), and

    mu_{t+1}[j] = sum over (i, k) with nbr[t, i, k] = j of mu_t[i] P[t, i, k],

a scatter-add (``jax.ops.segment_sum``) of the joint ``M_t`` onto the week-(t+1) slots. Every
function here equals its dense counterpart when the neighbourhood holds every cell (tested in
tests/test_sparse.py), at O(n_max K) instead of O(n_max^2) memory per week.

Scatter or gather: ``python -m birdflow.bench.sparse_push`` times the value and gradient of
the chain with the scatter-add and with a gather through a precomputed in-neighbour table.
On the shared 2-core CPU (float32, 52 transitions, random neighbourhoods) the gather took
1.97x / 5.2x the scatter's time at n = 500, K = 80 and 1.09x / 1.26x at n = 1,000, K = 120
(two runs each, a busy machine): the scatter is used, and it needs no second table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MASKED_LOGIT = -1e9  # the same constant as birdflow.model.markov (finite: gradients stay finite)


def init_logits(key: jax.Array, nbr: np.ndarray, dtype=jnp.float32) -> jax.Array:
    """i.i.d. N(0, 1) logits of shape (n_transitions, n_max, K), like the dense initialisation."""
    return jax.random.normal(key, nbr.shape, dtype)


def log_transitions(Z: jax.Array, nbr) -> jax.Array:
    """(T, n_max, K) log-softmax over each row's valid neighbours; padding entries ~ -1e9.

    ``nbr`` may be the numpy table or the same table as a (traced) device array.
    """
    z = jnp.where(jnp.asarray(nbr) >= 0, Z, MASKED_LOGIT)
    return jax.nn.log_softmax(z, axis=-1)


def transitions(Z: jax.Array, nbr) -> jax.Array:
    """(T, n_max, K) row-stochastic over valid neighbours; exactly 0 at padding entries/rows."""
    return jnp.exp(log_transitions(Z, nbr)) * (jnp.asarray(nbr) >= 0)


def push(mu: jax.Array, P_t: jax.Array, nbr_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step: joint ``M_t = mu[:, None] * P_t`` (n_max, K) and ``mu_{t+1}`` (n_max,).

    ``nbr_t`` is the (n_max, K) table of transition t; padding (-1) entries carry zero mass and
    are sent to slot 0 (adding exactly 0).
    """
    M_t = mu[:, None] * P_t
    nxt = jax.ops.segment_sum(M_t.ravel(), jnp.maximum(nbr_t, 0).ravel(),
                              num_segments=mu.shape[0])
    return M_t, nxt


def marginals(mu0: jax.Array, P: jax.Array, nbr) -> tuple[jax.Array, jax.Array]:
    """One-way marginals (T + 1, n_max) and sparse joints (T, n_max, K) by ``lax.scan``."""

    def step(mu, xs):
        P_t, nbr_t = xs
        M_t, nxt = push(mu, P_t, nbr_t)
        return nxt, (mu, M_t)

    mu_last, (mus, M) = jax.lax.scan(step, mu0, (P, jnp.asarray(nbr, jnp.int32)))
    return jnp.concatenate([mus, mu_last[None]], axis=0), M


def project(distr: jax.Array, P: jax.Array, nbr, start: int,
            n_steps: int) -> jax.Array:
    """(n_steps + 1, n_max) pushes of a slot distribution from marginal-week ``start``."""
    nbr = jnp.asarray(nbr, jnp.int32)
    steps = (start + jnp.arange(n_steps)) % P.shape[0]

    def step(d, t):
        _, nxt = push(d, P[t], nbr[t])
        return nxt, nxt

    _, seq = jax.lax.scan(step, distr, steps)
    return jnp.concatenate([distr[None], seq], axis=0)


def to_dense(M: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """(T, n_max, K) sparse joints/transitions -> (T, n_max, n_max) dense, 0 off the neighbourhood.

    numpy; for tests and small exports only (it allocates the dense array).
    """
    M, nbr = np.asarray(M), np.asarray(nbr)
    T, n_max, _ = nbr.shape
    out = np.zeros((T, n_max, n_max), dtype=M.dtype)
    t, i, k = np.nonzero(nbr >= 0)
    out[t, i, nbr[t, i, k]] = M[t, i, k]
    return out


def from_dense(A: np.ndarray, nbr: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """(T, n_max, n_max) dense -> (T, n_max, K) values at the neighbourhood, ``fill`` at padding."""
    A, nbr = np.asarray(A), np.asarray(nbr)
    t = np.arange(nbr.shape[0])[:, None, None]
    i = np.arange(nbr.shape[1])[None, :, None]
    return np.where(nbr >= 0, A[t, i, np.maximum(nbr, 0)], fill)
