"""The synthetic species' scenes: what kind of bird the true chain describes, as constants.

A scene fixes the geography (flyway nodes, range ellipses) and the bird's weekly movement (the
transition kernel) of :mod:`birdflow.synthetic.flyway`; ``species.synthetic.scene`` picks one:

* ``flyway`` (default): a long-distance migrant (Great Lakes -> Central America, ~4,000 km).
  Its ranges, flyway *and* weekly hop all scale with ``species.synthetic.size``; its truth is
  dense (a uniform floor on every pair of consecutive weeks' cells).
* ``continental``: a short-distance migrant with continent-wide ranges (~2,200 x 1,800 km) and
  short weekly hops: the range centre moves at most ~115 km a week (Minnesota -> Tennessee,
  ~1,000 km a season), a bird's weekly kernel has sigma 80 km and it never moves more than
  ``reach_km`` (250 km, great-circle between cell centres) in a week: the truth is exactly
  zero beyond, so a neighbourhood-sparse model with ``model.neighbourhood_km = reach_km``
  can represent it exactly. ``size`` scales its ranges and flyway, never the hop.
* ``regional``: the continental ranges with a slower flyway (nodes 1.2 deg apart: the range
  centre moves at most ~45 km a week at size 1) and a short hop (sigma 35 km, never more
  than 100 km a week). At 20 km and size 1.5 it has more than 16,000 cells per week with
  ~4x fewer parameters than the continental scene there, so that size trains on a 24 GB CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from birdflow.errors import ConfigError


@dataclass(frozen=True)
class Scene:
    """Constants of one synthetic scene (lengths in km, positions in degrees lon/lat).

    Attributes:
        name: the ``species.synthetic.scene`` value.
        nodes_lonlat: flyway nodes (breeding, stopover 1, stopover 2, wintering); the support
            centre moves along them with the season (:data:`flyway.SEASON_KEYFRAMES`), one
            node unit in ~3 weeks of passage, so the node spacing sets the weekly speed.
        anchor_lonlat: ``size`` scales the scene (nodes, ellipses, coast) about this point.
        semi_along_km: range ellipse semi-axis along the flyway (the range's length / 2).
        semi_across_km: across the flyway: (on passage, on the breeding/wintering range).
        sigma_km: sd of the weekly Gaussian dispersal kernel around a bird's target.
        pull: a bird's target = next week's centre + ``pull`` x its offset from this week's
            centre, so a bird at distance d from the centre is drawn (1 - pull) d towards it
            each week (keeps a hump-shaped range; near 1 = birds keep their place in the range).
        floor: uniform mixing weight of each row: spread over every destination of the next
            week (``reach_km`` None) or over the destinations within ``reach_km``.
        habitat_sd: sd of the per-cell log habitat preference (drawn from the seed).
        reach_km: longest weekly move (great-circle km between cell centres, as
            :mod:`birdflow.data.reach` measures it); None = no limit (dense truth).
        hop_scales_with_size: True when ``size`` also scales ``sigma_km`` (the flyway scene).
    """

    name: str
    nodes_lonlat: tuple[tuple[float, float], ...]
    anchor_lonlat: tuple[float, float]
    semi_along_km: float
    semi_across_km: tuple[float, float]
    sigma_km: float
    pull: float
    floor: float
    habitat_sd: float
    reach_km: float | None
    hop_scales_with_size: bool

    def sigma_m(self, size: float) -> float:
        """The kernel's sd in metres at ``size``."""
        return (size * self.sigma_km if self.hop_scales_with_size else self.sigma_km) * 1e3


FLYWAY = Scene(
    name="flyway",
    nodes_lonlat=((-80.0, 45.5), (-87.5, 36.0), (-97.0, 26.5), (-90.0, 16.0)),
    anchor_lonlat=(-89.0, 31.0), semi_along_km=700.0, semi_across_km=(380.0, 480.0),
    sigma_km=150.0, pull=0.9, floor=0.002, habitat_sd=0.4, reach_km=None,
    hop_scales_with_size=True)

CONTINENTAL = Scene(
    name="continental",
    nodes_lonlat=((-92.0, 44.0), (-91.3, 41.0), (-90.6, 38.0), (-90.0, 35.0)),
    anchor_lonlat=(-91.0, 39.5), semi_along_km=1110.0, semi_across_km=(900.0, 920.0),
    sigma_km=80.0, pull=0.97, floor=0.002, habitat_sd=0.4, reach_km=250.0,
    hop_scales_with_size=False)

REGIONAL = Scene(
    name="regional",
    nodes_lonlat=((-91.6, 41.3), (-91.3, 40.1), (-91.0, 38.9), (-90.8, 37.7)),
    anchor_lonlat=(-91.0, 39.5), semi_along_km=1110.0, semi_across_km=(900.0, 920.0),
    sigma_km=35.0, pull=0.97, floor=0.002, habitat_sd=0.4, reach_km=100.0,
    hop_scales_with_size=False)

SCENES = {s.name: s for s in (FLYWAY, CONTINENTAL, REGIONAL)}
DEFAULT_SCENE = FLYWAY.name


def get_scene(name: str) -> Scene:
    """The scene called ``name``; ConfigError naming the key otherwise."""
    try:
        return SCENES[str(name)]
    except KeyError:
        raise ConfigError(f"species.synthetic.scene={name!r}: unknown scene; choose one of "
                          f"{sorted(SCENES)}") from None
