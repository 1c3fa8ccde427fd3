"""Differentiable interval log-likelihood of tracks under the chain (JAX, batched by start week).

An interval of a bird observed in cell ``c1`` at model week ``t1`` and in ``c2`` at ``t2``,
``lag`` transitions later, scores ``log((e_{c1} P_{t1} ... P_{t1+lag-1})[c2] + 1e-8)`` — the
same number as :func:`birdflow.evaluation.intervals.score_intervals`' ``ll``, computed from the
logits so that it can be differentiated. All intervals that start in the same week are pushed
forward together: one ``(week, interval, slot) x (week, slot, slot)`` product per step (on the
sparse layout, a scatter-add of the kept pairs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from birdflow.errors import DataError
from birdflow.model import markov, sparse

LL_FLOOR = 1e-8  # BirdFlowR calc_interval_metrics scores log(p + 1e-8), as evaluation does


class IntervalBatch(NamedTuple):
    """Intervals in slot layout, padded per start week (a pytree of arrays).

    Attributes:
        start_slot: (n_weeks, B) slot of the start cell in week t1 (0 in padding).
        end_slot: (n_weeks, B) slot of the end cell in week t2 (0 in padding).
        lag: (n_weeks, B) transitions from t1 to t2 (0 in padding).
        weight: (n_weeks, B) 1 for a real interval, 0 for padding.
    """

    start_slot: jax.Array
    end_slot: jax.Array
    lag: jax.Array
    weight: jax.Array

    @property
    def max_lag(self) -> int:
        return int(np.max(np.asarray(self.lag), initial=0))

    @property
    def n_intervals(self) -> int:
        return int(np.asarray(self.weight).sum())


def _slot_of(index: markov.WeekIndex, weeks: np.ndarray, cells: np.ndarray, what: str) -> np.ndarray:
    n_cells = int(index.slot_cell.max()) + 1
    lookup = np.full((index.n_weeks, max(n_cells, int(cells.max(initial=0)) + 1)), -1)
    for t in range(index.n_weeks):
        sc = index.slot_cell[t]
        lookup[t, sc[sc >= 0]] = np.flatnonzero(sc >= 0)
    slots = lookup[weeks, cells]
    if (slots < 0).any():
        i = int(np.flatnonzero(slots < 0)[0])
        raise DataError(f"interval {i}: {what} cell {cells[i]} is not active in model week "
                        f"{weeks[i]}; score only intervals with exclude == ''")
    return slots


def make_batch(intervals: pd.DataFrame, index: markov.WeekIndex) -> IntervalBatch:
    """Pack scorable intervals (columns t1, t2, lag, cell1, cell2) by start week."""
    t1 = intervals["t1"].to_numpy(int)
    lag = intervals["lag"].to_numpy(int)
    if len(t1) == 0:
        raise DataError("no intervals to score: the split is empty")
    s1 = _slot_of(index, t1, intervals["cell1"].to_numpy(int), "start")
    s2 = _slot_of(index, intervals["t2"].to_numpy(int), intervals["cell2"].to_numpy(int), "end")
    counts = np.bincount(t1, minlength=index.n_weeks)
    shape = (index.n_weeks, int(counts.max()))
    start, end, lags, weight = (np.zeros(shape, int), np.zeros(shape, int), np.zeros(shape, int),
                                np.zeros(shape))
    position = np.zeros(len(t1), int)
    for t in range(index.n_weeks):
        rows = np.flatnonzero(t1 == t)
        position[rows] = np.arange(len(rows))
    start[t1, position], end[t1, position], lags[t1, position] = s1, s2, lag
    weight[t1, position] = 1.0
    return IntervalBatch(jnp.asarray(start), jnp.asarray(end), jnp.asarray(lags),
                         jnp.asarray(weight, dtype=jnp.result_type(float)))


CHUNK_ELEMENTS = 2**25  # sparse push: at most this many (interval, slot, neighbour) products at once


def _push(d: jax.Array, P: jax.Array, t: jax.Array, nbr) -> jax.Array:
    """(W, B, n_max) distributions one transition forward, start week w by transition ``t[w]``.

    Dense: one batched matrix product. Sparse (``nbr`` (T, n_max, K)): per start week,
    :func:`birdflow.model.sparse.push` of each of the B distributions, a few weeks at a time so
    that at most :data:`CHUNK_ELEMENTS` (interval, slot, neighbour) products exist together.
    """
    if nbr is None:
        return jnp.einsum("wbi,wij->wbj", d, P[t])
    push_all = jax.vmap(lambda d_b, P_w, nbr_w: sparse.push(d_b, P_w, nbr_w)[1], (0, None, None))
    per_week = max(d.shape[1] * P.shape[1] * P.shape[2], 1)
    return jax.lax.map(lambda args: push_all(*args), (d, P[t], nbr[t]),
                       batch_size=int(min(d.shape[0], max(1, CHUNK_ELEMENTS // per_week))))


def interval_log_likelihoods(params: dict, index: markov.WeekIndex, batch: IntervalBatch,
                             max_lag: int) -> jax.Array:
    """(n_weeks, B) log-probability of each interval's end cell (0 in padding), nats.

    ``max_lag`` (static) is ``batch.max_lag``: the number of forward steps. Dense or sparse
    transitions (``index.nbr``); an end cell the sparse chain cannot reach in ``lag`` steps
    scores ``log(1e-8)``, as in evaluation.
    """
    P = markov.transitions(params, index)
    nbr = None if index.nbr is None else jnp.asarray(index.nbr, jnp.int32)
    n_weeks, n_max = index.n_weeks, index.n_max
    d = jax.nn.one_hot(batch.start_slot, n_max, dtype=P.dtype) * batch.weight[..., None]
    weeks = jnp.arange(n_weeks)
    ll = jnp.zeros(batch.weight.shape, P.dtype)
    for k in range(max_lag):  # unrolled: max_lag is small (weeks between observations)
        t = (weeks + k) % index.n_transitions if index.cyclic else jnp.minimum(
            weeks + k, index.n_transitions - 1)
        d = _push(d, P, t, nbr)
        p_end = jnp.take_along_axis(d, batch.end_slot[..., None], axis=-1)[..., 0]
        here = (batch.lag == k + 1) & (batch.weight > 0)
        ll = jnp.where(here, jnp.log(jnp.where(here, p_end, 1.0) + LL_FLOOR), ll)
    return ll


def mean_log_likelihood(params: dict, index: markov.WeekIndex, batch: IntervalBatch,
                        max_lag: int) -> jax.Array:
    """Mean interval log-likelihood over the batch's intervals (a scalar, nats)."""
    ll = interval_log_likelihoods(params, index, batch, max_lag)
    return (ll * batch.weight).sum() / batch.weight.sum()


def mean_standard_error(params: dict, index: markov.WeekIndex, batch: IntervalBatch,
                        max_lag: int) -> jax.Array:
    """The standard error of :func:`mean_log_likelihood` over the batch's intervals (nats):
    the weighted standard deviation of the interval log-likelihoods over √(intervals)."""
    ll = interval_log_likelihoods(params, index, batch, max_lag)
    w = batch.weight
    n = w.sum()
    mean = (ll * w).sum() / n
    return jnp.sqrt(((ll - mean) ** 2 * w).sum() / n / n)
