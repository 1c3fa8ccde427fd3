"""The species zoo: synthetic species whose migrations differ the way real species' do.

Each zoo scene (``species.synthetic.scene=zoo_<kind>``, ``conf/species/zoo_<kind>.yaml``) is a
:class:`ZooPlan`: one or more *populations*, each a range (a disc of land cells) whose centre
moves through the year, and the weekly movement kernel. :mod:`birdflow.synthetic.zoo_chain`
turns a plan into a true chain. A population either follows a seasonal :class:`Route` on the
synthetic species' calendar (:func:`birdflow.synthetic.flyway.season_position`: breeding weeks
21-32, wintering 45-10, migration between; spring may take another way than autumn), or
:class:`Wander` s through the year by weekly keyframes (a nomad).

The kinds: ``zoo_longhaul`` (Great Lakes -> Central America, ~3,300 km), ``zoo_shorthop``
(Wisconsin -> Tennessee, ~1,000 km), ``zoo_loop`` (prairie breeder, south through the
Mississippi valley in autumn, north over the Great Plains in spring), ``zoo_leapfrog`` (the
northern breeders winter furthest south), ``zoo_partial`` (a southern resident population
beside northern migrants), ``zoo_nomad`` (an irruptive wanderer with no fixed ranges) and
``zoo_resident``. Positions are degrees lon/lat on the Americas LAEA grid of the flyway scene;
at 100 km every week has at most ~150 cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from birdflow.synthetic.flyway import season_position

LonLat = tuple[float, float]


@dataclass(frozen=True)
class Route:
    """A seasonal route from the breeding (first node) to the wintering range (last node).

    Attributes:
        autumn: nodes (lon, lat) breeding -> wintering; one node = a resident.
        spring: the nodes of the way back, listed breeding -> wintering with the same ends;
            None = the autumn way reversed.
        range_km: radius of the breeding and wintering ranges; passage_km: on passage.
    """

    autumn: tuple[LonLat, ...]
    spring: tuple[LonLat, ...] | None = None
    range_km: float = 450.0
    passage_km: float = 350.0

    def centre_radius(self, week: int) -> tuple[LonLat, float]:
        """The range centre (lon, lat) and radius (km) in S&T week 1..52."""
        pos = float(season_position(np.array([week]))[0])  # 0 breeding ... 3 wintering
        north = week < 21 and 0 < pos < 3
        nodes = np.array(self.spring if (north and self.spring) else self.autumn, float)
        k = pos / 3.0 * (len(nodes) - 1)
        lon = np.interp(k, np.arange(len(nodes)), nodes[:, 0])
        lat = np.interp(k, np.arange(len(nodes)), nodes[:, 1])
        on_range = 1.0 - min(pos, 3.0 - pos) if len(nodes) > 1 else 1.0
        on_range = max(0.0, on_range)
        return (float(lon), float(lat)), self.passage_km + on_range * (self.range_km - self.passage_km)


@dataclass(frozen=True)
class Wander:
    """A nomad's range: the centre moves through weekly keyframes (week, lon, lat), cyclic."""

    keyframes: tuple[tuple[int, float, float], ...]
    range_km: float = 450.0

    def centre_radius(self, week: int) -> tuple[LonLat, float]:
        k = np.array(self.keyframes, float)
        weeks = np.concatenate([k[:, 0], [k[0, 0] + 52]])
        w = week if week >= k[0, 0] else week + 52
        lon = np.interp(w, weeks, np.concatenate([k[:, 1], [k[0, 1]]]))
        lat = np.interp(w, weeks, np.concatenate([k[:, 2], [k[0, 2]]]))
        return (float(lon), float(lat)), self.range_km


@dataclass(frozen=True)
class ZooPlan:
    """A zoo species: its populations and weekly kernel.

    Attributes:
        name: the scene name (``zoo_<kind>``).
        populations: each cell of a week belongs to the population whose range it lies
            deepest in; its birds aim where that range's centre goes next week.
        sigma_km: sd of the weekly Gaussian kernel around a bird's target.
        pull: a bird keeps this share of its offset from its range centre (1 = rigid shift).
        floor: uniform share of every row (all transitions positive).
        habitat_sd: sd of the log habitat preference (seeded noise).
    """

    name: str
    populations: tuple[Route | Wander, ...]
    sigma_km: float = 150.0
    pull: float = 0.9
    floor: float = 0.002
    habitat_sd: float = 0.3


ZOO = {p.name: p for p in (
    ZooPlan("zoo_longhaul", (Route(((-84.0, 45.0), (-86.5, 36.0), (-95.5, 28.5), (-89.0, 15.5)),
                                   range_km=420.0, passage_km=330.0),)),
    ZooPlan("zoo_shorthop", (Route(((-90.0, 44.5), (-88.0, 35.5)), range_km=420.0),),
            sigma_km=120.0),
    ZooPlan("zoo_loop", (Route(((-100.0, 50.0), (-91.0, 42.0), (-91.0, 34.0), (-99.0, 27.0)),
                               spring=((-100.0, 50.0), (-104.0, 42.0), (-103.0, 34.0), (-99.0, 27.0)),
                               range_km=380.0, passage_km=300.0),)),
    ZooPlan("zoo_leapfrog", (
        Route(((-88.0, 53.0), (-87.0, 41.0), (-92.0, 31.0), (-97.5, 23.5), (-90.5, 16.0)),
              range_km=380.0, passage_km=300.0),
        Route(((-105.0, 43.0), (-105.5, 36.0), (-104.5, 26.5)), range_km=380.0, passage_km=300.0)),
            sigma_km=120.0),
    ZooPlan("zoo_partial", (
        Route(((-89.0, 36.5),), range_km=380.0),
        Route(((-88.0, 45.5), (-91.0, 38.0), (-95.5, 29.5)), range_km=400.0, passage_km=330.0)),
            sigma_km=120.0),
    ZooPlan("zoo_nomad", (Wander(((1, -100.0, 45.0), (6, -95.0, 48.0), (11, -92.0, 46.0),
                                  (16, -87.0, 47.5), (21, -85.5, 43.0), (26, -90.0, 46.5),
                                  (31, -93.5, 41.0), (35, -98.5, 40.0), (40, -104.0, 46.0),
                                  (46, -103.0, 48.5)), range_km=430.0),),
            sigma_km=220.0, pull=0.6, floor=0.005),
    ZooPlan("zoo_resident", (Route(((-88.0, 40.0),), range_km=420.0),), sigma_km=45.0,
            pull=1.0),
)}


def is_zoo(scene: str) -> bool:
    """Whether ``scene`` names a zoo species."""
    return str(scene) in ZOO
