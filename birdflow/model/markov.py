"""Markov chain over grid cells with one transition matrix per week (JAX).

Cells outside a week's dynamic mask never take part in that week. Each week's cells are
packed into ``n_max`` *slots* (the week's dynamic-mask cells in cell order, i.e. BirdFlowR's
dmi order, then padding), so every transition is an ``(n_max, n_max)`` logit matrix and all
weeks run in one ``lax.scan``. Padding slots get a large negative *finite* logit (never
``-inf``: that makes softmax gradients NaN) and carry exactly zero probability.

Transition t (0-based) goes from week t to week t + 1; a cyclic model (52 weeks) has 52
transitions, the last one 52 -> 1. ``marginals`` returns ``n_transitions + 1`` one-way
marginals: mu[0] = softmax(z0) and mu[t + 1] = column sums of M[t]. For a cyclic model the
last one is the model's week 1 after a full year (BirdFlowPy compares it to week 1's target
but does not tie it to mu[0]).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from birdflow.model import sparse as _sparse
from birdflow.model.sparse import MASKED_LOGIT  # -1e9: finite, so gradients stay finite


@dataclass(frozen=True)
class WeekIndex:
    """Static slot layout of a BirdFlowData's dynamic masks (numpy, never traced).

    Attributes:
        slot_cell: (n_weeks, n_max) active-cell index of each slot; -1 for padding.
        cyclic: True when the 52 -> 1 transition is modelled.
        nbr: None for dense transitions, or the *sparse* (neighbourhood) layout:
            (n_transitions, n_max, K) int32, ``nbr[t, i, k]`` = the week-(t+1) slot of the
            k-th cell reachable from slot i of week t, -1 for padding (all -1 in padding rows).
            Sparse logits ``Z`` and joints ``M`` are then (n_transitions, n_max, K), paired
            entry by entry with ``nbr``.
    """

    slot_cell: np.ndarray
    cyclic: bool
    nbr: np.ndarray | None = None

    @classmethod
    def from_dynamic_mask(cls, dynamic_mask: np.ndarray, cyclic: bool, n_max: int | None = None):
        dm = np.asarray(dynamic_mask, dtype=bool)
        counts = dm.sum(axis=1)
        n_max = int(n_max or counts.max())
        slot_cell = np.full((dm.shape[0], n_max), -1, dtype=np.int32)
        for t in range(dm.shape[0]):
            cells = np.flatnonzero(dm[t])
            slot_cell[t, : len(cells)] = cells
        return cls(slot_cell=slot_cell, cyclic=bool(cyclic))

    @classmethod
    def from_bfdata(cls, ds: xr.Dataset) -> WeekIndex:
        return cls.from_dynamic_mask(ds["dynamic_mask"].values, bool(ds.attrs.get("cyclic", 1)))

    @property
    def n_weeks(self) -> int:
        return self.slot_cell.shape[0]

    @property
    def n_max(self) -> int:
        return self.slot_cell.shape[1]

    @property
    def n_transitions(self) -> int:
        return self.n_weeks if self.cyclic else self.n_weeks - 1

    @property
    def valid(self) -> np.ndarray:
        """(n_weeks, n_max) bool: slot holds a real cell."""
        return self.slot_cell >= 0

    def week_of_marginal(self) -> np.ndarray:
        """Week index (0-based) of each of the n_transitions + 1 one-way marginals."""
        return np.arange(self.n_transitions + 1) % self.n_weeks

    def slot_values(self, per_cell: np.ndarray) -> np.ndarray:
        """(n_weeks, n_cells) array -> (n_transitions + 1, n_max) slot layout, 0 in padding."""
        weeks = self.week_of_marginal()
        cells = np.where(self.valid, self.slot_cell, 0)[weeks]
        out = np.take_along_axis(np.asarray(per_cell)[weeks], cells, axis=1)
        return np.where(self.valid[weeks], out, 0.0)

    @property
    def sparse(self) -> bool:
        return self.nbr is not None

    @property
    def n_neighbours(self) -> int:
        """K: logits per row (n_max when dense)."""
        return self.n_max if self.nbr is None else self.nbr.shape[2]

    def n_parameters(self) -> int:
        """Logits that matter: n_1 + sum_t n_t n_{t+1} (BirdFlowR's count); sparse: n_1 + the
        number of (from, to) pairs kept."""
        n = self.valid.sum(axis=1)
        if self.nbr is not None:
            return int(n[0] + (self.nbr >= 0).sum())
        nxt = n[(np.arange(self.n_transitions) + 1) % self.n_weeks]
        return int(n[0] + (n[: self.n_transitions] * nxt).sum())


def init_params(key: jax.Array, index: WeekIndex, dtype=jnp.float32) -> dict:
    """i.i.d. N(0, 1) logits, as BirdFlowPy initialises them.

    ``Z`` is (n_transitions, n_max, n_max) dense, or (n_transitions, n_max, K) on the sparse
    layout (``index.nbr``).
    """
    k0, k1 = jax.random.split(key)
    if index.nbr is not None:
        return {"z0": jax.random.normal(k0, (index.n_max,), dtype),
                "Z": _sparse.init_logits(k1, index.nbr, dtype)}
    return {
        "z0": jax.random.normal(k0, (index.n_max,), dtype),
        "Z": jax.random.normal(k1, (index.n_transitions, index.n_max, index.n_max), dtype),
    }


def st_init(ds: xr.Dataset, index: WeekIndex, dtype=jnp.float32) -> dict:
    """Logits of the S&T null chain: ``z0 = log s_1``, ``Z[t, i, :] = log s_{t+1}``.

    Every row of transition t is the next week's S&T distribution, so the marginals equal the
    S&T maps exactly (L2 = 0) and the first step starts from the null model the evaluation
    compares against, instead of i.i.d. N(0, 1) logits. On the sparse layout row i is
    ``s_{t+1}`` restricted to slot i's neighbours and renormalised (the softmax does that), so
    the marginals are close to, not equal to, the S&T maps.
    """
    s = index.slot_values(ds["distr"].values)
    log_s = np.log(np.where(s > 0, s, 1.0)) + np.where(s > 0, 0.0, MASKED_LOGIT)
    t = np.arange(index.n_transitions)
    if index.nbr is not None:
        nbr = index.nbr
        Z = np.where(nbr >= 0, log_s[t + 1][t[:, None, None], np.maximum(nbr, 0)], MASKED_LOGIT)
    else:
        Z = np.broadcast_to(log_s[t + 1][:, None, :],
                            (index.n_transitions, index.n_max, index.n_max))
    return {"z0": jnp.asarray(log_s[0], dtype), "Z": jnp.asarray(Z, dtype)}


def _masks(index: WeekIndex) -> tuple[jax.Array, jax.Array, jax.Array]:
    valid = jnp.asarray(index.valid)
    t = np.arange(index.n_transitions)
    return valid[0], valid[t], valid[(t + 1) % index.n_weeks]


def log_transitions(params: dict, index: WeekIndex, nbr=None) -> jax.Array:
    """(n_transitions, n_max, n_max) row-wise log-softmax; padding columns ~ -1e9.

    Sparse layout: (n_transitions, n_max, K), softmax over each row's valid neighbours.
    ``nbr`` (optional, sparse only) is ``index.nbr`` as a device array passed into jitted
    code (e.g. ``Problem.nbr``), so large tables are arguments, not compiled-in constants.
    """
    if index.nbr is not None:
        return _sparse.log_transitions(params["Z"], index.nbr if nbr is None else nbr)
    _, _, valid_to = _masks(index)
    z = jnp.where(valid_to[:, None, :], params["Z"], MASKED_LOGIT)
    return jax.nn.log_softmax(z, axis=-1)


def transitions(params: dict, index: WeekIndex, nbr=None) -> jax.Array:
    """Row-stochastic transitions; rows of padding slots are all zero (sparse: (T, n_max, K)).

    ``nbr``: see :func:`log_transitions`.
    """
    if index.nbr is not None:
        return _sparse.transitions(params["Z"], index.nbr if nbr is None else nbr)
    _, valid_from, _ = _masks(index)
    return jnp.exp(log_transitions(params, index)) * valid_from[:, :, None]


def initial_distr(params: dict, index: WeekIndex) -> jax.Array:
    valid0, _, _ = _masks(index)
    return jax.nn.softmax(jnp.where(valid0, params["z0"], MASKED_LOGIT))


def marginals(params: dict, index: WeekIndex, nbr=None) -> tuple[jax.Array, jax.Array]:
    """One-way marginals mu (n_transitions + 1, n_max) and joints M (n_transitions, n_max, n_max).

    ``M[t] = diag(mu[t]) P[t]`` and ``mu[t + 1] = M[t].sum(0)``, computed with ``lax.scan``.
    Sparse layout: M is (n_transitions, n_max, K) and ``mu[t + 1]`` its scatter-add onto the
    week-(t+1) slots (:func:`birdflow.model.sparse.marginals`); ``nbr``: see
    :func:`log_transitions`.
    """
    P = transitions(params, index, nbr)
    mu0 = initial_distr(params, index)
    if index.nbr is not None:
        return _sparse.marginals(mu0, P, index.nbr if nbr is None else nbr)

    def step(mu, P_t):
        M_t = mu[:, None] * P_t
        return M_t.sum(axis=0), (mu, M_t)

    mu_last, (mus, M) = jax.lax.scan(step, mu0, P)
    return jnp.concatenate([mus, mu_last[None]], axis=0), M


def project(distr: jax.Array, P: jax.Array, start: int, n_steps: int,
            nbr: np.ndarray | None = None) -> jax.Array:
    """Push a slot distribution of marginal-week ``start`` forward ``n_steps`` transitions.

    Returns the (n_steps + 1, n_max) sequence of distributions (the first is ``distr``).
    ``P`` is :func:`transitions`' output; indices wrap around for cyclic models. For the
    sparse layout pass ``nbr=index.nbr`` (``P`` is then (T, n_max, K)).
    """
    if nbr is not None:
        return _sparse.project(distr, P, nbr, start, n_steps)
    steps = (start + jnp.arange(n_steps)) % P.shape[0]

    def step(d, t):
        nxt = d @ P[t]
        return nxt, nxt

    _, seq = jax.lax.scan(step, distr, steps)
    return jnp.concatenate([distr[None], seq], axis=0)
