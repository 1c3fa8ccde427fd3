"""Sparsify a fitted chain with BirdFlowR's methods (reference §4.5), keeping it a chain.

Methods (``p`` = mass to keep, default 0.99):

* ``model``: one threshold over all joint values of all transitions, the smallest value such
  that the values at or above it carry ``p`` of the total mass (BirdFlowR samples every
  second value to find it; we use them all);
* ``marginal``: that threshold per transition;
* ``conditional``: per row and per column of each joint, the threshold keeping ``p`` of that
  row's / column's mass; an entry below either is zeroed, except the largest
  ``ceil(p_protected * k)`` of the ``k`` non-zero entries of each row and of each column.

Threshold (``find_threshold``): sort the non-zero values in decreasing order; the first value
at which the cumulative sum reaches ``p`` x total.

Then, with ``fix=True``, dead ends are removed as BirdFlowR's ``fix_dead_ends`` does (up to
100 passes): a cell that receives mass but has none onward loses its incoming entries, a cell
with mass onward but none incoming loses its outgoing entries. Finally the chain is made
consistent: transitions ``P_t = M_t / rowsum`` are re-applied from the week-1 distribution
(renormalised row sums of the first joint), ``M_t = diag(mu_t) P_t``, ``mu_{t+1} = colsum``,
so every joint sums to 1 and each week's distribution is the same seen from either side
(BirdFlowR instead renormalises each joint on its own).

Neighbourhood-sparse models (``index.nbr`` set) are sparsified in their own layout, with the
same result as their dense form: thresholds read the kept values, column sums go through
``nbr``, and ``conditional`` ranks the rows and columns of one densified week at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

from birdflow.errors import ConfigError
from birdflow.model import joints

METHODS = ("model", "marginal", "conditional")
MAX_FIX_PASSES = 100


def find_threshold(values: np.ndarray, p: float) -> float:
    """Smallest kept value: the non-zero values >= it carry at least ``p`` of the total."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
    v = v[v > 0]
    if not v.size:
        return 0.0
    k = int(np.searchsorted(np.cumsum(v), p * v.sum() * (1 - 1e-12)))
    return float(v[min(k, v.size - 1)])


def _top_k_mask(M: np.ndarray, frac: float, axis: int) -> np.ndarray:
    """True on the ceil(frac * k) largest of the k non-zero entries along rows (1) or columns (0)."""
    A = M if axis == 1 else M.T
    nz = (A > 0).sum(axis=1)
    keep_n = np.ceil(frac * nz).astype(int)
    rank = np.argsort(np.argsort(-A, axis=1, kind="stable"), axis=1)
    out = rank < keep_n[:, None]
    return out if axis == 1 else out.T


def _conditional(M: np.ndarray, p: float, p_protected: float) -> np.ndarray:
    below = np.zeros(M.shape, dtype=bool)
    for axis in (1, 0):
        A = M if axis == 1 else M.T
        thr = np.array([find_threshold(row, p) for row in A])
        low = A < thr[:, None]
        below |= low if axis == 1 else low.T
    protected = _top_k_mask(M, p_protected, 1) | _top_k_mask(M, p_protected, 0)
    return np.where(below & ~protected, 0.0, M)


def _conditional_week(model, M: np.ndarray, t: int, p: float, p_protected: float) -> np.ndarray:
    """:func:`_conditional` of transition t, on its densified week for a sparse model (rows
    and columns of the whole week), read back into the model's layout."""
    if not model.sparse:
        return _conditional(M[t], p, p_protected)
    nbr = model.index.nbr[t]
    kept = _conditional(joints.dense_joint(model.index, M, t), p, p_protected)
    return np.where(nbr >= 0, np.take_along_axis(kept, np.maximum(nbr, 0), axis=1), 0.0)


def _incoming(M_t: np.ndarray, nbr_t: np.ndarray | None) -> np.ndarray:
    """Column sums of one joint: (n_max,) mass arriving in each next-week slot."""
    if nbr_t is None:
        return M_t.sum(axis=0)
    ok = nbr_t >= 0
    return np.bincount(nbr_t[ok], weights=M_t[ok], minlength=M_t.shape[0])


def fix_dead_ends(M: np.ndarray, cyclic: bool,
                  nbr: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Zero entries leading into dead ends or out of unreachable cells; returns (M, passes).

    ``nbr``: the neighbour table of a neighbourhood-sparse ``M`` (n_transitions, n_max, K);
    None for dense joints.
    """
    M = M.copy()
    nt = M.shape[0]
    for n_pass in range(1, MAX_FIX_PASSES + 1):
        changed = False
        for t in range(nt if cyclic else nt - 1):
            nxt = (t + 1) % nt
            # both over week t+1 slots
            incoming, onward = _incoming(M[t], None if nbr is None else nbr[t]), M[nxt].sum(axis=1)
            dead = (incoming > 0) & (onward <= 0)
            orphan = (onward > 0) & (incoming <= 0)
            if dead.any():
                if nbr is None:
                    M[t][:, dead] = 0.0
                else:
                    M[t][(nbr[t] >= 0) & dead[np.maximum(nbr[t], 0)]] = 0.0
                changed = True
            if orphan.any():
                M[nxt][orphan, :] = 0.0
                changed = True
        if not changed:
            return M, n_pass
    return M, MAX_FIX_PASSES


def _rechain(M: np.ndarray, nbr: np.ndarray | None = None) -> np.ndarray:
    """Consistent joints from the sparse ones' transitions and the week-1 distribution."""
    out = np.zeros_like(M)
    mu = M[0].sum(axis=1)
    mu = mu / mu.sum()
    for t in range(M.shape[0]):
        rows = M[t].sum(axis=1, keepdims=True)
        P = np.divide(M[t], rows, out=np.zeros_like(M[t]), where=rows > 0)
        out[t] = mu[:, None] * P
        mu = _incoming(out[t], None if nbr is None else nbr[t])
        mu = mu / mu.sum()
    return out


def density(model) -> float:
    """Fraction of the possible joint entries (dynamic mask pairs) that are non-zero (either
    layout: a sparse model's positive kept entries)."""
    valid = model.index.valid
    nw, nt = model.index.n_weeks, model.n_transitions
    possible = sum(int(valid[t].sum()) * int(valid[(t + 1) % nw].sum()) for t in range(nt))
    return float((model.marginals > 0).sum()) / possible


def sparsify(model, method: str = "model", p: float = 0.99, *, fix: bool = True,
             p_protected: float = 0.10):
    """A sparse copy of ``model`` and statistics of what was lost.

    Args:
        model: fitted :class:`birdflow.model.fitted.BirdFlowModel`, dense or
            neighbourhood-sparse (the copy keeps its layout and neighbour table; entries are
            only zeroed, ``conditional`` ranks each week's densified rows and columns).
        method: "model", "marginal" or "conditional" (module doc).
        p: fraction of mass to keep, in (0, 1].
        fix: remove dead ends before making the chain consistent.
        p_protected: conditional only: fraction of each row's/column's entries never zeroed.

    Returns:
        (sparse model, stats) with stats ``method, p, density_before, density_after,
        pct_zero, pct_density_lost`` (percent of joint mass zeroed, fix included),
        ``fix_passes`` and ``max_distr_tv`` (largest total-variation change of a week's
        distribution). The stats are also kept in the data attribute ``sparse`` (JSON),
        which the BirdFlowR export writes to ``metadata/sparse`` (with ``is_sparse`` TRUE).

    Raises:
        ConfigError: unknown method or p outside (0, 1].
    """
    if method not in METHODS:
        raise ConfigError(f"sparsify method={method!r}: unknown; use one of {list(METHODS)}")
    if not 0 < float(p) <= 1 or not 0 <= float(p_protected) <= 1:
        raise ConfigError(f"sparsify p={p}, p_protected={p_protected}: both must be in (0, 1]")
    M = np.asarray(model.marginals, dtype=np.float64)
    if method == "model":
        S = np.where(M >= find_threshold(M, p), M, 0.0)
    elif method == "marginal":
        S = np.stack([np.where(m >= find_threshold(m, p), m, 0.0) for m in M])
    else:
        S = np.stack([_conditional_week(model, M, t, p, p_protected)
                      for t in range(len(M))])
    passes, nbr = 0, model.index.nbr
    if fix:
        S, passes = fix_dead_ends(S, model.cyclic, nbr)
    lost = 1.0 - S.sum() / M.sum()
    S = _rechain(S, nbr)
    out = replace(model, marginals=S, data=model.data.copy())
    before, after = model.distrs(), out.distrs()
    stats = {"method": method, "p": float(p), "p_protected": float(p_protected), "fix": bool(fix),
             "density_before": density(model), "density_after": density(out),
             "pct_zero": 100.0 * (1.0 - density(out)), "pct_density_lost": 100.0 * float(lost),
             "fix_passes": passes,
             "max_distr_tv": float(0.5 * np.abs(after - before).sum(axis=1).max())}
    out.data.attrs["sparse"] = json.dumps(stats)
    if math.isnan(stats["max_distr_tv"]):
        raise ConfigError(f"sparsify method={method}, p={p} removed every path through some "
                          "week; raise p")
    return out, stats
