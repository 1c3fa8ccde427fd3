"""θ of each species from a few outer parameters: one pooled θ, or a linear trait model.

A joint tune (:mod:`joint`) learns a vector φ shared by several species; species s is fitted
at ``θ_s = θ(φ, x_s)``. :class:`ThetaMap` is that map:

- *pooled* (no traits): ``φ = θ̄``, the free components of θ, the same for every species;
- *trait model*: ``θ_s = θ̄ + A x_s`` on the free components, ``x_s`` the species' standardized
  traits (:func:`standardize`) and ``A`` a (free components × traits) matrix, so
  ``φ = (θ̄, vec A)`` and a species without tracks gets θ from its traits alone.

The frozen components of θ stay at the start ``θ0``; ``θ_s`` is clipped to θ's bounds. The map
is affine in φ, so the chain rule is a pull-back: ``dL/dθ̄ = Σ_s h_s`` and ``dL/dA = Σ_s h_s x_sᵀ``
for per-species hypergradients ``h_s`` (a clipped component passes no gradient). A ridge
penalty ``ridge/2 · ||A||²`` keeps A small where few species inform it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from birdflow.errors import ConfigError
from birdflow.tuning.inner import THETA_NAMES

# trait -> the feature a trait model reads (before standardizing): log scales for sizes
FEATURES = {
    "migration_km": lambda km: np.log1p(float(km) / 100.0),  # 0 km (resident) -> 0
    "body_mass_g": lambda g: np.log(float(g)),
}


def features(traits: Mapping, names: Sequence[str], species: str = "?") -> np.ndarray:
    """(len(names),) features of one species' ``traits`` (the species config's node)."""
    out = []
    for name in names:
        if name not in FEATURES:
            raise ConfigError(f"trait {name!r}: no feature for it; choose from {sorted(FEATURES)}")
        if traits is None or traits.get(name) is None:
            raise ConfigError(f"species {species}: traits.{name} missing from its config; a "
                              "trait model needs it for every species")
        out.append(FEATURES[name](traits[name]))
    return np.array(out, float)


def standardize(x: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """``x`` (species × traits) centred and scaled by the mean and standard deviation of
    ``rows`` (the species the model is learned from; the others are scaled the same way)."""
    ref = x[list(rows)]
    sd = ref.std(0)
    return (x - ref.mean(0)) / np.where(sd > 0, sd, 1.0)


@dataclass(frozen=True)
class ThetaMap:
    """``θ_s = clip(θ0 with free components θ̄ + A x_s)`` (see module doc).

    Attributes:
        theta0: (4,) the start; its frozen components stay.
        free: (4,) bool, the components the map sets.
        lo, hi: (4,) θ's bounds.
        x: (species, traits) standardized traits; zero columns: pooled.
        ridge: weight of ``ridge/2 · ||A||²`` in the joint loss.
        slope_bound: ``|A_ij|`` at most this (a standard deviation of a trait moves a log
            weight by at most that much).
    """

    theta0: np.ndarray
    free: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    x: np.ndarray
    ridge: float = 0.0
    slope_bound: float = 2.0

    @property
    def k(self) -> int:
        return int(np.sum(self.free))

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    @property
    def size(self) -> int:
        return self.k * (1 + self.d)

    def names(self) -> list[str]:
        free = [n for n, f in zip(THETA_NAMES, self.free, strict=True) if f]
        return free + [f"A_{n}_x{j}" for n in free for j in range(self.d)]

    def start(self) -> np.ndarray:
        """φ at θ0 with A = 0."""
        return np.concatenate([self.theta0[self.free], np.zeros(self.k * self.d)])

    def fitted_start(self, thetas) -> np.ndarray:
        """φ whose map best reproduces given θ of the map's species (``thetas``: species × 4,
        e.g. each species' own tuned θ): ``θ̄`` their mean on the free components, ``A`` the
        ridge least-squares slopes on the standardized traits (``ridge`` as the map's),
        clipped to ``slope_bound``. For a pooled map, the mean θ. A joint tune started here
        begins where the species' own tunes ended instead of at θ0."""
        t = np.asarray(thetas, float)[:, self.free]
        mean = t.mean(0)
        if self.d == 0:
            return mean
        x = self.x
        A = np.linalg.solve(x.T @ x + self.ridge * np.eye(self.d), x.T @ (t - mean)).T
        return np.concatenate([mean, np.clip(A, -self.slope_bound, self.slope_bound).ravel()])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of φ: θ's bounds for θ̄, ±``slope_bound`` for A."""
        s = np.full(self.k * self.d, self.slope_bound)
        return (np.concatenate([self.lo[self.free], -s]),
                np.concatenate([self.hi[self.free], s]))

    def _split(self, phi) -> tuple[np.ndarray, np.ndarray]:
        phi = np.asarray(phi, float)
        return phi[:self.k], phi[self.k:].reshape(self.k, self.d)

    def _raw(self, phi, x) -> np.ndarray:
        mean, A = self._split(phi)
        theta = np.array(self.theta0, float)
        theta[self.free] = mean + A @ np.asarray(x, float)
        return theta

    def theta_at(self, phi, x) -> np.ndarray:
        """θ of a species with standardized traits ``x`` (one a model was not learned on too)."""
        return np.clip(self._raw(phi, x), self.lo, self.hi)

    def theta(self, phi, s: int) -> np.ndarray:
        """(4,) θ of species ``s``."""
        return self.theta_at(phi, self.x[s])

    def pullback(self, phi, s: int, h: np.ndarray) -> np.ndarray:
        """``J_sᵀ h``: species s's hypergradient ``h`` = dL_s/dθ_s as a gradient in φ."""
        raw = self._raw(phi, self.x[s])
        inside = (raw >= self.lo) & (raw <= self.hi)
        g = np.where(inside, np.asarray(h, float), 0.0)[self.free]
        return np.concatenate([g, np.outer(g, self.x[s]).ravel()])

    def penalty(self, phi) -> tuple[float, np.ndarray]:
        """``ridge/2 · ||A||²`` and its gradient in φ."""
        _, A = self._split(phi)
        grad = np.concatenate([np.zeros(self.k), self.ridge * A.ravel()])
        return 0.5 * self.ridge * float(np.sum(A**2)), grad


def pooled(theta0, free, lo, hi, n_species: int) -> ThetaMap:
    """One θ for ``n_species`` species."""
    return ThetaMap(np.asarray(theta0, float), np.asarray(free, bool), np.asarray(lo, float),
                    np.asarray(hi, float), np.zeros((n_species, 0)))
