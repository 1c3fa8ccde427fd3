"""Individual birds over the flyway scene whose movements a weekly Markov chain cannot express.

The synthetic species' ordinary tracks are draws from its true chain. The banding variant
(``species.synthetic.banding``, ``species=synthetic_banding``) keeps the scene — the same
raster, S&T maps and BirdFlowData — and simulates a population of individuals instead:

* **site fidelity**: each bird has its own breeding cell (drawn from the mean breeding-season
  map) and its own wintering cell (from the mean map of the residence weeks), where it sits
  every week of every year; with ``connectivity`` 0 the two are independent, so a chain that
  spreads a breeding cell's birds over the winter range cannot bring each back to its own cell;
* **stopovers of gamma length**: on passage each arrival is a stopover with probability
  ``stop_share``, staying round(Gamma(``stop_shape``, mean ``stop_mean_weeks``)) >= 2 weeks
  (cut short where its cell leaves the week's range), otherwise the bird flies on next week;
  leaving depends on the time already spent, not only on the cell and week;
* the movers go where the scene's chain would send them, rescaled (Sinkhorn) so that movers and
  stayers together fill next week's S&T map: the population's weekly occupancy stays close to
  the maps (:func:`occupancy_tv`) and the misspecification is in the dynamics.

:mod:`birdflow.synthetic.recoveries` turns the trajectories into band-and-recover pairs (and
optional weekly GPS-like fixes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

from birdflow.errors import ConfigError
from birdflow.model.fitted import BirdFlowModel
from birdflow.synthetic.flyway import N_WEEKS, true_season_weeks
from birdflow.synthetic.tracks import _draw_columns

SETTLE_WEEKS = 2  # the first nonbreeding weeks are still passage: the map settles (TV 0.15 -> 0.07)


@dataclass(frozen=True)
class BandingSettings:
    """The ``species.synthetic.banding`` node (see ``conf/species/synthetic_banding.yaml``)."""

    seed: int = 0
    n_birds: int = 1000
    gps_share: float = 0.0
    population: int = 20000
    connectivity: float = 0.0
    stop_share: float = 0.8
    stop_mean_weeks: float = 3.0
    stop_shape: float = 8.0
    band_shares: tuple = (0.6, 0.3, 0.1)
    recovery_shares: tuple = (0.1, 0.2, 0.7)
    survival: float = 0.6
    band_years: int = 3
    min_days: int = 30
    max_years: int = 5

    @classmethod
    def from_node(cls, node: Mapping) -> BandingSettings:
        """Read and check the node; ConfigError names the bad key and the allowed values."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(node) - allowed)
        if unknown:
            raise ConfigError(f"species.synthetic.banding: unknown key(s) {unknown}; allowed: "
                              f"{sorted(allowed)}")
        d = asdict(cls())
        try:
            for k, v in node.items():
                d[k] = tuple(float(x) for x in v) if k.endswith("_shares") else type(d[k])(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"species.synthetic.banding: bad value ({e}); see "
                              "conf/species/synthetic_banding.yaml for the types") from e
        s = cls(**d)
        checks = [
            ("n_birds", s.n_birds >= 2, ">= 2"),
            ("population", s.population >= s.n_birds, ">= n_birds (the tracked birds are a sample)"),
            ("gps_share", 0 <= s.gps_share <= 1, "in [0, 1]"),
            ("connectivity", 0 <= s.connectivity <= 1, "in [0, 1]"),
            ("stop_share", 0 <= s.stop_share <= 1, "in [0, 1]"),
            ("stop_mean_weeks", s.stop_mean_weeks >= 2, ">= 2 (a stopover lasts 2 weeks or more)"),
            ("stop_shape", s.stop_shape > 0, "> 0"),
            ("band_shares", len(s.band_shares) == 3 and min(s.band_shares) >= 0
             and sum(s.band_shares) > 0, "three weights >= 0: breeding, migration, nonbreeding"),
            ("recovery_shares", len(s.recovery_shares) == 3 and min(s.recovery_shares) >= 0
             and sum(s.recovery_shares) > 0, "three weights >= 0: breeding, migration, nonbreeding"),
            ("survival", 0 < s.survival <= 1, "in (0, 1]"),
            ("band_years", s.band_years >= 1, ">= 1"),
            ("min_days", 1 <= s.min_days < 365 * s.max_years, ">= 1 and below max_years"),
            ("max_years", s.max_years >= 1, ">= 1"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"species.synthetic.banding.{key}={getattr(s, key)}: must be {rule}")
        return s

    @property
    def n_years(self) -> int:
        """Simulated years: banding years plus the longest recovery gap, plus one."""
        return self.band_years + self.max_years + 1


def season_of_week() -> np.ndarray:
    """(52,) season of each S&T week (index 0 = week 1): 0 breeding, 1 migration, 2 nonbreeding."""
    out = np.ones(N_WEEKS, dtype=np.int64)
    seasons = true_season_weeks()
    for code, name in ((0, "breeding"), (2, "nonbreeding")):
        w0, w1 = seasons[name]
        weeks = np.arange(w0, w1 + 1) if w0 <= w1 else np.r_[w0:N_WEEKS + 1, 1:w1 + 1]
        out[weeks - 1] = code
    return out


def residence_weeks() -> tuple[np.ndarray, np.ndarray]:
    """0-based weeks a bird sits on its own breeding / wintering cell (bool (52,) each)."""
    season = season_of_week()
    breeding = season == 0
    w0 = true_season_weeks()["nonbreeding"][0] - 1
    winter = season == 2
    winter[[(w0 + k) % N_WEEKS for k in range(SETTLE_WEEKS)]] = False
    return breeding, winter


@dataclass
class Population:
    """Simulated birds: ``cell`` (birds, 52 x years) active-cell index of each absolute week
    (week 1 of year 0 first), their own ``breeding`` and ``wintering`` cells, and the weeks
    (bool (52,)) they sit on them."""

    cell: np.ndarray
    breeding: np.ndarray
    wintering: np.ndarray
    on_breeding: np.ndarray
    on_wintering: np.ndarray


def _column_scaling(kernel: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  iters: int = 2000, tol: float = 1e-9) -> np.ndarray:
    """Column scaling v of ``kernel`` (Sinkhorn) so diag(u) K diag(v) has these row/col sums."""
    u, v = np.ones(len(rows)), np.ones(len(cols))
    for _ in range(iters):
        v = np.divide(cols, kernel.T @ u, out=np.zeros_like(cols), where=cols > 0)
        u = np.divide(rows, kernel @ v, out=np.zeros_like(rows), where=rows > 0)
        if np.abs(u @ kernel * v - cols).sum() <= tol * cols.sum():
            break
    return v


def simulate(truth: BirdFlowModel, s: BandingSettings, n_birds: int, n_years: int,
             rng: np.random.Generator) -> Population:
    """Simulate ``n_birds`` individuals for ``n_years`` cyclic years over the truth's scene."""
    mu = truth.distrs()  # (52, n_cells) the S&T maps the scene made
    P = [truth.transition_at(t) for t in range(N_WEEKS)]
    dyn = mu > 0
    on_b, on_w = residence_weeks()
    m_b, m_w = mu[on_b].mean(axis=0), mu[on_w].mean(axis=0)
    n = mu.shape[1]
    breeding = rng.choice(n, n_birds, p=m_b / m_b.sum())
    wintering = rng.choice(n, n_birds, p=m_w / m_w.sum())
    if s.connectivity > 0:  # some birds winter where the scene's chain takes them from home
        follow = np.flatnonzero(rng.random(n_birds) < s.connectivity)
        d = np.eye(n)[breeding[follow]]
        t = int(np.flatnonzero(on_b)[-1])
        while not on_w[t % N_WEEKS]:
            d, t = d @ P[t % N_WEEKS], t + 1
        wintering[follow] = _draw_columns(d, rng)
    cell = np.zeros((n_birds, N_WEEKS * n_years), dtype=np.int32)
    cell[:, 0] = wintering if on_w[0] else breeding
    stay = np.zeros(n_birds, dtype=np.int64)  # weeks a bird still means to stay where it is
    for a in range(N_WEEKS * n_years - 1):
        t, nxt = a % N_WEEKS, (a + 1) % N_WEEKS
        here = cell[:, a]
        if on_b[nxt] or on_w[nxt]:  # a residence week: arrive home, or stay home
            cell[:, a + 1] = breeding if on_b[nxt] else wintering
            stay[:] = 0
            continue
        staying = (stay > 0) & dyn[nxt, here]
        target = n_birds * mu[nxt]
        counts = np.bincount(here[staying], minlength=n)
        for c in np.flatnonzero(counts > target):  # a full cell sends the surplus on
            birds = rng.permutation(np.flatnonzero(staying & (here == c)))
            staying[birds[: int(np.ceil(counts[c] - target[c]))]] = False
        movers = np.flatnonzero(~staying)
        rows, cols = np.flatnonzero(dyn[t]), np.flatnonzero(dyn[nxt])  # the two weeks' ranges
        kernel = P[t][np.ix_(rows, cols)] * (rows[:, None] != cols[None, :])  # movers leave
        src = np.bincount(here[movers], minlength=n)[rows].astype(float)
        residual = np.clip(target - np.bincount(here[staying], minlength=n), 0.0, None)[cols]
        v = _column_scaling(kernel, src, residual * src.sum() / residual.sum())
        slot = np.full(n, -1)
        slot[rows] = np.arange(rows.size)
        dest = cols[_draw_columns(kernel[slot[here[movers]]] * v[None, :], rng)]
        cell[:, a + 1] = here
        cell[movers, a + 1] = dest
        stay[staying] -= 1
        stop = rng.random(movers.size) < s.stop_share
        length = np.rint(rng.gamma(s.stop_shape, s.stop_mean_weeks / s.stop_shape, movers.size))
        stay[movers] = np.where(stop, np.maximum(length, 2) - 1, 0).astype(np.int64)
    return Population(cell=cell, breeding=breeding, wintering=wintering, on_breeding=on_b,
                      on_wintering=on_w)


def passage_stays(pop: Population) -> np.ndarray:
    """Lengths (weeks) of the runs of consecutive passage weeks a bird spends in one cell."""
    home = np.tile(pop.on_breeding | pop.on_wintering, pop.cell.shape[1] // N_WEEKS)
    cell = np.where(home[None, :], -1, pop.cell)
    flat = np.column_stack([cell, np.full(len(cell), -1)]).ravel()  # -1 ends every bird's runs
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    return lengths[flat[starts] >= 0]


def occupancy_tv(pop: Population, mu: np.ndarray, year: int = 1) -> np.ndarray:
    """(52,) total variation between the birds' occupancy in each week of ``year`` and the map."""
    n = mu.shape[1]
    weeks = pop.cell[:, year * N_WEEKS:(year + 1) * N_WEEKS]
    occ = np.stack([np.bincount(weeks[:, t], minlength=n) for t in range(N_WEEKS)]) / len(weeks)
    return 0.5 * np.abs(occ - mu).sum(axis=1)


def sample_tv(mu: np.ndarray, n_birds: int, rng: np.random.Generator) -> np.ndarray:
    """(52,) TV of ``n_birds`` i.i.d. draws from each week's map: the noise floor of the check."""
    return np.array([0.5 * np.abs(rng.multinomial(n_birds, m / m.sum()) / n_birds - m).sum()
                     for m in mu])
