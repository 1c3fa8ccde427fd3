"""The true chain of a zoo species (:mod:`birdflow.synthetic.zoo`), on the flyway scene's grid.

Week t's support A_t is the land cells inside any population's range disc. A cell belongs to
the population whose disc it lies deepest in (smallest distance / radius); its birds aim at
``c_{t+1} + pull (x - c_t)`` (that population's centres) and the transition P_t is the
flyway scene's Gaussian kernel around the target over A_{t+1} plus habitat and a uniform floor
(as :func:`birdflow.synthetic.flyway._transition`). Week 1's distribution is the stationary
distribution of the annual product P_1 ... P_52 (its leading left eigenvector), so the
chain is exactly cyclic; the result is a :class:`birdflow.synthetic.flyway.FlywayChain`.
"""

from __future__ import annotations

import numpy as np

from birdflow.data.grid import from_lonlat, to_lonlat
from birdflow.errors import ConfigError
from birdflow.model.markov import WeekIndex
from birdflow.synthetic.flyway import (
    EDGE_M,
    LAEA_AMERICAS,
    N_WEEKS,
    FlywayChain,
    _transition,
    is_land,
    population_scale,
)
from birdflow.synthetic.zoo import ZooPlan


def ranges(plan: ZooPlan) -> tuple[np.ndarray, np.ndarray]:
    """Centres (52, n_pop, 2) in LAEA metres and radii (52, n_pop) in metres of each week."""
    centres = np.zeros((N_WEEKS, len(plan.populations), 2))
    radii = np.zeros((N_WEEKS, len(plan.populations)))
    for t in range(N_WEEKS):
        for k, pop in enumerate(plan.populations):
            (lon, lat), r_km = pop.centre_radius(t + 1)
            centres[t, k] = from_lonlat(lon, lat, LAEA_AMERICAS)
            radii[t, k] = r_km * 1e3
    return centres, radii


def _grid(centres: np.ndarray, radii: np.ndarray, res_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres covering every disc plus a cell, outer edges on multiples of EDGE_M."""
    lo = (centres - radii[..., None]).reshape(-1, 2).min(axis=0) - res_m
    hi = (centres + radii[..., None]).reshape(-1, 2).max(axis=0) + res_m
    (xmin, ymin), (xmax, ymax) = np.floor(lo / EDGE_M) * EDGE_M, np.ceil(hi / EDGE_M) * EDGE_M
    x = xmin + res_m * (np.arange(round((xmax - xmin) / res_m)) + 0.5)
    y = ymax - res_m * (np.arange(round((ymax - ymin) / res_m)) + 0.5)
    return x, y


def _stationary(annual: np.ndarray) -> np.ndarray:
    """The distribution mu with mu A = mu of a row-stochastic (n, n) matrix A."""
    vals, vecs = np.linalg.eig(annual.T)
    mu = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1.0))]))
    mu /= mu.sum()
    for _ in range(50):  # polish the eigenvector
        mu = mu @ annual
        mu /= mu.sum()
    return mu


def build_zoo_chain(plan: ZooPlan, seed: int = 0, native_res_km: float = 100.0) -> FlywayChain:
    """Build the true chain of a zoo species (deterministic for the arguments).

    Raises:
        ConfigError: a week's ranges hold no land cell at this resolution.
    """
    res_m = float(native_res_km) * 1e3
    centres, radii = ranges(plan)
    x, y = _grid(centres, radii, res_m)
    gx, gy = np.meshgrid(x, y)
    land = is_land(*to_lonlat(gx, gy, LAEA_AMERICAS))
    # depth (distance / radius) of every grid cell in every population's disc, every week
    depth = np.sqrt((gx[None, None] - centres[..., 0, None, None]) ** 2
                    + (gy[None, None] - centres[..., 1, None, None]) ** 2) / radii[..., None, None]
    support = (depth <= 1.0).any(axis=1) & land[None]
    if not support.reshape(N_WEEKS, -1).any(axis=1).all():
        raise ConfigError(f"species.synthetic.scene={plan.name}: a week's ranges hold no land "
                          f"cell at native_res_km={native_res_km:g}; use a finer resolution")
    static = support.any(axis=0)
    rows, cols = np.nonzero(static)
    dyn = support[:, rows, cols]
    owner = depth[:, :, rows, cols].argmin(axis=1)  # (52, n_cells) population of each cell
    xy = np.column_stack([x[cols], y[rows]])
    habitat = plan.habitat_sd * np.random.default_rng(seed).standard_normal(static.shape)[rows, cols]
    index = WeekIndex.from_dynamic_mask(dyn, cyclic=True)
    marg = np.zeros((N_WEEKS, index.n_max, index.n_max))
    counts = dyn.sum(axis=1)
    for t in range(N_WEEKS):
        u = (t + 1) % N_WEEKS
        a, b = np.flatnonzero(dyn[t]), np.flatnonzero(dyn[u])
        k = owner[t, a]
        # per-cell source and destination centres: the owning population's move
        # the flyway scene's kernel, with the zoo plan's pull, floor and width
        marg[t, : a.size, : b.size] = _transition(xy[a], xy[b], centres[t, k], centres[u, k],
                                                  habitat[b], plan.sigma_km * 1e3, scene=plan)
    annual = np.eye(counts[0])
    for t in range(N_WEEKS):
        annual = annual @ marg[t, : counts[t], : counts[(t + 1) % N_WEEKS]]
    mu = np.zeros(dyn.shape)
    m = _stationary(annual)
    for t in range(N_WEEKS):
        mu[t, dyn[t]] = m
        marg[t, : counts[t]] *= m[:, None]
        m = marg[t, : counts[t], : counts[(t + 1) % N_WEEKS]].sum(axis=0)
    return FlywayChain(x=x, y=y, land=land, static_mask=static, dynamic_mask=dyn, mu=mu,
                       marginals=marg, population=population_scale())


