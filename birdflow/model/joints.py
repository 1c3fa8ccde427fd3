"""One transition at a time: a fitted chain's joints, dense or neighbourhood-sparse.

A dense model holds its joints ``M`` as (n_transitions, n_max, n_max) in the slot layout of
:class:`birdflow.model.markov.WeekIndex`. A neighbourhood-sparse one (``index.nbr`` set) holds
them as (n_transitions, n_max, K), paired entry by entry with ``index.nbr``: the dense joint
is ``dense[t, i, nbr[t, i, k]] = M[t, i, k]`` where ``nbr >= 0`` and 0 elsewhere.

Everything here reads one transition ``t`` at a time, so code written against these
functions never builds the all-weeks dense array of a sparse model (52 n_max^2 float64 values:
15 GB at 6,000 cells per week). Dense models go through the same numpy operations as before
(row sums, ``x @ M[t]``), so their results are unchanged bit for bit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from birdflow.errors import DataError


def check_shape(index, M: np.ndarray) -> None:
    """DataError unless ``M`` has the shape the index's layout needs and, when sparse, is 0
    at every padding entry (``nbr == -1``: no cell there to carry mass)."""
    n_max = index.n_max
    want = (index.n_transitions, n_max, n_max) if index.nbr is None else index.nbr.shape
    if tuple(np.shape(M)) != tuple(want):
        kind = "dense" if index.nbr is None else "neighbourhood-sparse (paired with index.nbr)"
        raise DataError(f"marginals of shape {np.shape(M)}: a {kind} model needs {tuple(want)} "
                        "(n_transitions, n_max, n_max or K); build the joints and the WeekIndex "
                        "from the same layout")
    if index.nbr is None:
        return
    for t in range(index.n_transitions):
        pad = M[t][index.nbr[t] < 0]
        if np.any(pad != 0):
            raise DataError(f"marginals of transition {t + 1}: {int((pad != 0).sum())} padding "
                            f"entries (nbr = -1) hold mass (largest {float(np.abs(pad).max()):.3g})"
                            "; a sparse joint must be 0 where no neighbour is stored")


def _pairs(index, M: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse transition t as (from slots, to slots, values) of its kept entries."""
    nbr = index.nbr[t]
    ok = nbr >= 0
    rows = np.broadcast_to(np.arange(nbr.shape[0])[:, None], nbr.shape)
    return rows[ok], nbr[ok], np.asarray(M[t], dtype=np.float64)[ok]


def dense_joint(index, M: np.ndarray, t: int) -> np.ndarray:
    """(n_max, n_max) joint of transition t in the slot layout (one week densified)."""
    if index.nbr is None:
        return M[t]
    fi, ti, v = _pairs(index, M, t)
    out = np.zeros((index.n_max, index.n_max))
    np.add.at(out, (fi, ti), v)
    return out


def joint_csr(index, M: np.ndarray, t: int, transpose: bool = False) -> sp.csr_array:
    """Transition t's joint (or its transpose) as a CSR array, column indices sorted."""
    if index.nbr is None:
        A = sp.csr_array(np.asarray(M[t], dtype=np.float64))
    else:
        fi, ti, v = _pairs(index, M, t)
        A = sp.coo_array((v, (fi, ti)), shape=(index.n_max, index.n_max)).tocsr()
    A = A.T.tocsr() if transpose else A
    A.sum_duplicates()
    A.sort_indices()
    return A


def row_sums(index, M: np.ndarray, t: int) -> np.ndarray:
    """(n_max,) mass leaving each slot of week t (the model's week-t distribution)."""
    return M[t].sum(axis=1)


def col_sums(index, M: np.ndarray, t: int) -> np.ndarray:
    """(n_max,) mass arriving in each slot of week t + 1."""
    if index.nbr is None:
        return M[t].sum(axis=0)
    _, ti, v = _pairs(index, M, t)
    return np.bincount(ti, weights=v, minlength=index.n_max)


def push(index, M: np.ndarray, t: int, x: np.ndarray, transpose: bool = False) -> np.ndarray:
    """``x @ M_t`` (or ``x @ M_t^T``) for slot vectors x (..., n_max): a sparse product when
    the model is sparse."""
    if index.nbr is None:
        return x @ (M[t].T if transpose else M[t])
    return np.asarray(x @ joint_csr(index, M, t, transpose))


def nonzero_entries(index, M: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(from slots, to slots, values) of the positive entries of transition t between real
    cells, in row-major (from, to) order for either layout."""
    sf = index.slot_cell[t % index.n_weeks]
    st = index.slot_cell[(t + 1) % index.n_weeks]
    if index.nbr is None:
        Mt = M[t]
        fi, ti = np.nonzero((Mt > 0) & (sf[:, None] >= 0) & (st[None, :] >= 0))
        return fi, ti, Mt[fi, ti]
    A = joint_csr(index, M, t)
    fi = np.repeat(np.arange(index.n_max), np.diff(A.indptr))
    ti, v = A.indices, A.data
    keep = (v > 0) & (sf[fi] >= 0) & (st[ti] >= 0)
    return fi[keep], ti[keep], v[keep]


class Transitions:
    """Row-stochastic ``P_t = M_t / rowsum`` (rows without mass are 0), built per week on
    demand and kept: dense (n_max, n_max) arrays for a dense model, CSR for a sparse one.

    ``step(t, x)`` is ``x @ P_t`` for slot vectors x (..., n_max) of week t.
    """

    def __init__(self, index, M: np.ndarray):
        self.index, self.M = index, M
        self._P: dict[int, object] = {}

    def matrix(self, t: int):
        if t not in self._P:
            if self.index.nbr is None:
                Mt = np.asarray(self.M[t], dtype=np.float64)
                rows = Mt.sum(axis=1, keepdims=True)
                self._P[t] = np.divide(Mt, rows, out=np.zeros_like(Mt), where=rows > 0)
            else:
                A = joint_csr(self.index, self.M, t)
                row = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
                rows = np.bincount(row, weights=A.data, minlength=A.shape[0])[row]
                A.data = np.divide(A.data, rows, out=np.zeros_like(A.data), where=rows > 0)
                self._P[t] = A
        return self._P[t]

    def step(self, t: int, x: np.ndarray) -> np.ndarray:
        return np.asarray(x @ self.matrix(t))
