"""A sparse true chain: birds that never move more than ``reach_km`` in a week.

For a scene with ``reach_km`` (:data:`birdflow.synthetic.scene.CONTINENTAL`), transition t
keeps, for each week-t cell i, only the week-(t+1) cells j within ``reach_km`` great-circle km
of it (cell centres as unit vectors, :func:`birdflow.data.reach.within_radius`, the same
measure ``model.neighbourhood_km`` uses), with

    P_t[i, j] = (1 - floor) softmax_j(-|x_j - target_i|^2 / (2 sigma^2) + habitat_j)
                + floor / K_i                       (j within reach; K_i such cells)

and exactly 0 beyond. Everything is built in the WeekIndex ``nbr`` layout (52, n_max, K) and as
scipy CSR matrices, never as an (n_max, n_max) array; the week-1 distribution is the stationary
distribution of P_1 ... P_52 by power iteration with sparse products.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from birdflow.data import reach
from birdflow.data.grid import to_lonlat
from birdflow.errors import ConfigError
from birdflow.model.markov import WeekIndex
from birdflow.synthetic.flyway import LAEA_AMERICAS, N_WEEKS, FlywayChain, SceneGeometry
from birdflow.synthetic.scene import Scene

STATIONARY_TOL = 1e-15  # power iteration stops when the L1 change of mu_1 falls below this
MAX_YEARS = 20_000


def _pairs(xyz_from: np.ndarray, xyz_to: np.ndarray, reach_km: float, week: int,
           scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Row lengths (n_from,) and flat destination indices (ascending per row) within reach.

    Raises:
        ConfigError: a week-t cell with no week-(t+1) cell within reach, or a week-(t+1) cell
            that no week-t cell reaches (naming the week, the counts and the distance needed).
    """
    rows = reach.within_radius(xyz_from, xyz_to, reach_km)
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.concatenate(rows) if len(rows) else np.zeros(0, np.int64)
    reached = np.bincount(flat, minlength=len(xyz_to)) > 0
    stranded, unreached = int((lens == 0).sum()), int((~reached).sum())
    if stranded or unreached:
        need = max(float(reach.nearest_km(xyz_to, xyz_from).max()),
                   float(reach.nearest_km(xyz_from, xyz_to).max()))
        nxt = week % N_WEEKS + 1
        raise ConfigError(
            f"species.synthetic.scene={scene.name}: reach_km={reach_km:g} breaks transition "
            f"week {week} -> {nxt}: {stranded} of {len(xyz_from)} week-{week} cells have no "
            f"week-{nxt} cell within reach and {unreached} of {len(xyz_to)} week-{nxt} cells "
            f"are reached from no week-{week} cell; the supports need reach_km >= "
            f"{np.ceil(need):.0f} (raise the scene's reach_km or slow its flyway)")
    return lens, flat


def _row_softmax(logits: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Softmax of a flat array within rows (``starts`` = each row's first entry; rows non-empty)."""
    e = np.exp(logits - np.maximum.reduceat(logits, starts)[rows])
    return e / np.add.reduceat(e, starts)[rows]


def _transition_csr(geo: SceneGeometry, xyz: np.ndarray, t: int, scene: Scene,
                    size: float) -> sp.csr_array:
    """Row-stochastic P_t (n_t, n_{t+1}) over the two weeks' supports, zero beyond reach."""
    u = (t + 1) % N_WEEKS
    a, b = np.flatnonzero(geo.dyn[t]), np.flatnonzero(geo.dyn[u])
    lens, flat = _pairs(xyz[a], xyz[b], float(scene.reach_km), t + 1, scene)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    rows = np.repeat(np.arange(a.size), lens)
    target = geo.centres[u] + scene.pull * (geo.xy[a] - geo.centres[t])
    d2 = ((target[rows] - geo.xy[b][flat]) ** 2).sum(axis=1)
    kernel = _row_softmax(-d2 / (2 * scene.sigma_m(size) ** 2) + geo.habitat[b][flat],
                          indptr[:-1], rows)
    p = (1 - scene.floor) * kernel + scene.floor / lens[rows]
    return sp.csr_array((p, flat, indptr), shape=(a.size, b.size))


def transition_matrices(geo: SceneGeometry, scene: Scene, size: float) -> list[sp.csr_array]:
    """The 52 row-stochastic P_t (n_t, n_{t+1}) as CSR, column indices ascending.

    Raises:
        ConfigError: ``reach_km`` strands a cell or leaves one unreachable (see :func:`_pairs`).
    """
    lon, lat = to_lonlat(geo.xy[:, 0], geo.xy[:, 1], LAEA_AMERICAS)  # as make_bfdata does
    xyz = reach.unit_vectors(lon, lat)
    return [_transition_csr(geo, xyz, t, scene, size) for t in range(N_WEEKS)]


def stationary(P: list[sp.csr_array]) -> np.ndarray:
    """Week-1 distribution with mu_1 P_1 ... P_52 = mu_1 (power iteration, sparse products)."""
    mu1 = np.full(P[0].shape[0], 1.0 / P[0].shape[0])
    for _ in range(MAX_YEARS):
        m = mu1
        for Pt in P:
            m = Pt.T @ m
        m /= m.sum()
        done = np.abs(m - mu1).sum() < STATIONARY_TOL
        mu1 = m
        if done:
            return mu1
    raise RuntimeError(f"power iteration did not converge in {MAX_YEARS} years")


def sparse_chain(geo: SceneGeometry, scene: Scene, size: float,
                 population: np.ndarray) -> FlywayChain:
    """The true chain of a scene with ``reach_km``, its joints in the WeekIndex ``nbr`` layout.

    Returns:
        FlywayChain with ``marginals`` (52, n_max, K) float64 joints mu_t[i] P_t[i, k] and
        ``nbr`` (52, n_max, K) int32 (week-(t+1) slots, ascending, -1 padding); K is the
        longest row of any week.
    """
    P = transition_matrices(geo, scene, size)
    index = WeekIndex.from_dynamic_mask(geo.dyn, cyclic=True)
    K = max(int(np.diff(Pt.indptr).max()) for Pt in P)
    nbr = np.full((N_WEEKS, index.n_max, K), -1, dtype=np.int32)
    marg = np.zeros((N_WEEKS, index.n_max, K))
    mu = np.zeros(geo.dyn.shape)
    m = stationary(P)
    for t, Pt in enumerate(P):
        mu[t, geo.dyn[t]] = m
        lens = np.diff(Pt.indptr)
        rows = np.repeat(np.arange(Pt.shape[0]), lens)
        pos = np.arange(Pt.nnz) - Pt.indptr[rows]
        nbr[t, rows, pos] = Pt.indices  # slot order = cell order within a week
        marg[t, rows, pos] = m[rows] * Pt.data
        m = Pt.T @ m
    return FlywayChain(x=geo.x, y=geo.y, land=geo.land, static_mask=geo.static,
                       dynamic_mask=geo.dyn, mu=mu, marginals=marg, population=population,
                       nbr=nbr)
