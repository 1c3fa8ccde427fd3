"""Ground truth of the synthetic species: grid, ranges and a known weekly Markov chain.

The constants come from a :class:`birdflow.synthetic.scene.Scene`. The default ``flyway`` scene
(at ``size`` 1) is a migrant breeding around the Great Lakes, stopping over in
Tennessee and on the western Gulf coast, and wintering in Central America, on the Americas
Lambert azimuthal equal-area grid. ``size`` scales the whole scene (ranges, flyway, coast)
about an anchor point, so cell counts grow ~ size^2 at a fixed ``native_res_km``.

Week t's support A_t is the land cells of an ellipse whose centre moves along the flyway with
the season. The transition P_t (A_t -> A_{t+1}) is a softmax over destinations of
``-|x_j - target_i|^2 / (2 sigma^2) + habitat_j`` (target = the support centre's move plus a
pull towards the centre), mixed with a small uniform floor so every entry is positive (the
``continental`` scene: destinations within ``reach_km`` only, built sparse by
:mod:`birdflow.synthetic.continental`). The week-1 distribution is the stationary distribution of the annual product P_1 ... P_52, so
``mu_{t+1} = mu_t P_t`` and the chain is exactly cyclic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from birdflow.data.grid import from_lonlat, to_lonlat
from birdflow.model.markov import WeekIndex
from birdflow.synthetic.scene import FLYWAY, Scene

LAEA_AMERICAS = ("+proj=laea +lat_0=30 +lon_0=-95 +x_0=5500000 +y_0=9500000 "
                 "+datum=WGS84 +units=m +no_defs")
EDGE_M = 600_000.0  # grid edges are multiples of this, so 2x/3x/6x aggregation is exact
N_WEEKS = 52
# (week, position along the flyway in node units: 0 breeding ... 3 wintering); np.interp between.
SEASON_KEYFRAMES = np.array([(1, 3.0), (10, 3.0), (13, 2.0), (14, 2.0), (17, 1.0), (18, 1.0),
                             (21, 0.0), (32, 0.0), (36, 1.0), (38, 1.0), (41, 2.0), (42, 2.0),
                             (45, 3.0), (52, 3.0)])


def is_land(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Crude coast of the scene (degrees): False on the Gulf, Caribbean, Atlantic and Pacific."""
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    gx, gy = from_lonlat(lon, lat, LAEA_AMERICAS)
    cx, cy = from_lonlat(-90.5, 25.5, LAEA_AMERICAS)
    gulf = ((gx - cx) / 620e3) ** 2 + ((gy - cy) / 360e3) ** 2 <= 1.0
    caribbean = (lat < 21.5) & (lon > -87.5 + (21.5 - lat) / 11.5 * 4.5)
    atlantic = lon > -80.5 + (lat - 25.0) / 17.0 * 10.5
    pacific = lat < np.interp(lon, [-105, -97, -92, -86, -83, -78], [20, 16, 14.5, 12, 8.5, 8])
    return ~(gulf | caribbean | atlantic | pacific)


def season_position(week: np.ndarray) -> np.ndarray:
    """Position along the flyway (0 = breeding range ... 3 = wintering range) of weeks 1..52."""
    return np.interp(week, SEASON_KEYFRAMES[:, 0], SEASON_KEYFRAMES[:, 1])


def true_season_weeks() -> dict[str, tuple[int, int]]:
    """S&T (first, last) week of each season of the known chain.

    Breeding: the weeks on the breeding range (position 0); nonbreeding: on the wintering
    range (position 3, across new year); prebreeding migration: the weeks in between going
    north, postbreeding migration: going south.
    """
    weeks = np.arange(1, N_WEEKS + 1)
    pos = season_position(weeks)
    breeding = weeks[pos == 0.0]
    north = weeks[(pos > 0) & (pos < 3) & (weeks < breeding[0])]
    south = weeks[(pos > 0) & (pos < 3) & (weeks > breeding[-1])]
    return {"prebreeding_migration": (int(north[0]), int(north[-1])),
            "breeding": (int(breeding[0]), int(breeding[-1])),
            "postbreeding_migration": (int(south[0]), int(south[-1])),
            "nonbreeding": (int(south[-1]) + 1, int(north[0]) - 1)}


@dataclass
class FlywayChain:
    """The true chain on its grid (numpy, float64).

    Attributes:
        x, y: (ncol,), (nrow,) cell-centre coordinates in metres (y from north to south).
        land: (nrow, ncol) bool, False on no-data (ocean) cells.
        static_mask: (nrow, ncol) bool, cells in some week's support.
        dynamic_mask: (52, n_cells) bool, A_t over the active cells (row-major order).
        mu: (52, n_cells) weekly distributions; > 0 exactly on A_t, each sums to 1.
        marginals: (52, n_max, n_max) joints diag(mu_t) P_t in the WeekIndex slot layout,
            or (52, n_max, K) paired with ``nbr`` for a sparse truth.
        population: (52,) per-week abundance scale (raw band totals).
        nbr: None (dense truth) or the (52, n_max, K) int32 WeekIndex neighbour table.
    """

    x: np.ndarray
    y: np.ndarray
    land: np.ndarray
    static_mask: np.ndarray
    dynamic_mask: np.ndarray
    mu: np.ndarray
    marginals: np.ndarray
    population: np.ndarray
    nbr: np.ndarray | None = None

    def abundance(self) -> np.ndarray:
        """(52, nrow, ncol) float32 S&T-like abundance: mu_t x population_t, NaN on no-data."""
        rows, cols = np.nonzero(self.static_mask)
        cube = np.zeros((N_WEEKS, *self.static_mask.shape))
        cube[:, rows, cols] = self.mu * self.population[:, None]
        cube[:, ~self.land] = np.nan
        return cube.astype(np.float32)


def _supports(px: np.ndarray, py: np.ndarray, size: float,
              scene: Scene = FLYWAY) -> tuple[np.ndarray, np.ndarray]:
    """Ellipse membership (52, *px.shape) and support centres (52, 2) in metres."""
    lonlat = np.array(scene.nodes_lonlat)
    nodes = np.column_stack(from_lonlat(lonlat[:, 0], lonlat[:, 1], LAEA_AMERICAS))
    anchor = np.array(from_lonlat(*scene.anchor_lonlat, LAEA_AMERICAS), dtype=float)
    nodes = anchor + size * (nodes - anchor)
    seg = np.diff(nodes, axis=0)
    seg /= np.linalg.norm(seg, axis=1, keepdims=True)
    u = season_position(np.arange(1, N_WEEKS + 1))
    semi_across = scene.semi_across_km
    inside, centres = [], []
    for ut in u:
        k = int(min(np.floor(ut), 2))
        centre = nodes[k] + (ut - k) * (nodes[k + 1] - nodes[k])
        direction = seg[k] if ut != k or k == 0 else seg[k - 1] + seg[k]
        along = direction / np.linalg.norm(direction)
        across = np.array([-along[1], along[0]])
        end = max(0.0, 1.0 - min(ut, 3.0 - ut))  # 1 on the breeding/wintering range
        a = size * scene.semi_along_km * 1e3
        b = size * (semi_across[0] + end * (semi_across[1] - semi_across[0])) * 1e3
        dx, dy = px - centre[0], py - centre[1]
        inside.append(((dx * along[0] + dy * along[1]) / a) ** 2
                      + ((dx * across[0] + dy * across[1]) / b) ** 2 <= 1.0)
        centres.append(centre)
    return np.stack(inside), np.array(centres)


def _grid(size: float, res_m: float, scene: Scene = FLYWAY) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres of a grid covering every support, outer edges on multiples of EDGE_M."""
    # a coarse probe grid over a generous box finds the supports' bounding box
    anchor = np.array(from_lonlat(*scene.anchor_lonlat, LAEA_AMERICAS), dtype=float)
    half = size * 4.0e6
    probe = np.arange(-half, half + 1, size * 25e3)
    px, py = np.meshgrid(anchor[0] + probe, anchor[1] + probe)
    hit = _supports(px, py, size, scene)[0].any(axis=0)
    pad = res_m  # keep a ring of land/ocean around the range
    xmin = np.floor((px[hit].min() - pad) / EDGE_M) * EDGE_M
    xmax = np.ceil((px[hit].max() + pad) / EDGE_M) * EDGE_M
    ymin = np.floor((py[hit].min() - pad) / EDGE_M) * EDGE_M
    ymax = np.ceil((py[hit].max() + pad) / EDGE_M) * EDGE_M
    x = xmin + res_m * (np.arange(round((xmax - xmin) / res_m)) + 0.5)
    y = ymax - res_m * (np.arange(round((ymax - ymin) / res_m)) + 0.5)
    return x, y


def _transition(xy_from, xy_to, c_from, c_to, habitat_to, sigma_m, scene=FLYWAY) -> np.ndarray:
    """(n_from, n_to) row-stochastic P_t: Gaussian kernel around each cell's target + floor."""
    target = c_to + scene.pull * (xy_from - c_from)
    d2 = ((target[:, None, :] - xy_to[None, :, :]) ** 2).sum(-1)
    logits = -d2 / (2 * sigma_m**2) + habitat_to[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    kernel = np.exp(logits)
    kernel /= kernel.sum(axis=1, keepdims=True)
    return (1 - scene.floor) * kernel + scene.floor / xy_to.shape[0]


@dataclass(frozen=True)
class SceneGeometry:
    """What both truths share: grid, land, supports and habitat (see :func:`scene_geometry`).

    Attributes:
        x, y: (ncol,), (nrow,) cell centres in metres; land, static: (nrow, ncol) bool.
        dyn: (52, n_cells) bool supports A_t over the static cells (row-major order).
        xy: (n_cells, 2) cell centres in metres; centres: (52, 2) support centres in metres.
        habitat: (n_cells,) log habitat preference.
    """

    x: np.ndarray
    y: np.ndarray
    land: np.ndarray
    static: np.ndarray
    dyn: np.ndarray
    xy: np.ndarray
    centres: np.ndarray
    habitat: np.ndarray


def scene_geometry(seed: int, native_res_km: float, size: float, scene: Scene) -> SceneGeometry:
    """The grid, coast, weekly supports and habitat of a scene (deterministic)."""
    res_m = float(native_res_km) * 1e3
    x, y = _grid(size, res_m, scene)
    gx, gy = np.meshgrid(x, y)
    # the coast is scaled with the scene: test land at the point's size-1 position
    anchor = np.array(from_lonlat(*scene.anchor_lonlat, LAEA_AMERICAS), dtype=float)
    land = is_land(*to_lonlat(anchor[0] + (gx - anchor[0]) / size,
                              anchor[1] + (gy - anchor[1]) / size, LAEA_AMERICAS))
    ellipse, centres = _supports(gx, gy, size, scene)
    support = ellipse & land[None]
    static = support.any(axis=0)
    rows, cols = np.nonzero(static)
    habitat = scene.habitat_sd * np.random.default_rng(seed).standard_normal(static.shape)[rows, cols]
    return SceneGeometry(x=x, y=y, land=land, static=static, dyn=support[:, rows, cols],
                         xy=np.column_stack([x[cols], y[rows]]), centres=centres, habitat=habitat)


def population_scale() -> np.ndarray:
    """(52,) raw abundance scale: more birds after breeding (young), fewer by late winter."""
    weeks = np.arange(1, N_WEEKS + 1)
    return 40.0 * (1.0 + 0.8 * np.exp(-0.5 * ((weeks - 34) / 8.0) ** 2))


def build_flyway(seed: int = 0, native_res_km: float = 100.0, size: float = 1.0,
                 scene: Scene = FLYWAY) -> FlywayChain:
    """Build the true chain of the synthetic species (deterministic for the arguments).

    A scene with ``reach_km`` (the continental one) is built sparse by
    :func:`birdflow.synthetic.continental.sparse_chain`; the flyway scene dense here.
    """
    geo = scene_geometry(seed, native_res_km, size, scene)
    if scene.reach_km is not None:
        from birdflow.synthetic.continental import sparse_chain

        return sparse_chain(geo, scene, size, population_scale())
    dyn, xy, centres, habitat = geo.dyn, geo.xy, geo.centres, geo.habitat
    index = WeekIndex.from_dynamic_mask(dyn, cyclic=True)
    marg = np.zeros((N_WEEKS, index.n_max, index.n_max))
    counts = dyn.sum(axis=1)
    for t in range(N_WEEKS):
        a, b = np.flatnonzero(dyn[t]), np.flatnonzero(dyn[(t + 1) % N_WEEKS])
        marg[t, : a.size, : b.size] = _transition(xy[a], xy[b], centres[t],
                                                  centres[(t + 1) % N_WEEKS], habitat[b],
                                                  scene.sigma_m(size), scene)

    def year(m: np.ndarray) -> np.ndarray:
        for t in range(N_WEEKS):
            m = m @ marg[t, : counts[t], : counts[(t + 1) % N_WEEKS]]
        return m

    mu1 = np.full(counts[0], 1.0 / counts[0])
    for _ in range(10_000):  # power iteration on the annual product
        nxt = year(mu1)
        nxt /= nxt.sum()
        done = np.abs(nxt - mu1).sum() < 1e-14
        mu1 = nxt
        if done:
            break
    mu = np.zeros(dyn.shape)
    m = mu1
    for t in range(N_WEEKS):
        mu[t, dyn[t]] = m
        marg[t, : counts[t]] *= m[:, None]
        m = marg[t, : counts[t], : counts[(t + 1) % N_WEEKS]].sum(axis=0)
    return FlywayChain(x=geo.x, y=geo.y, land=geo.land, static_mask=geo.static,
                       dynamic_mask=dyn, mu=mu, marginals=marg, population=population_scale())
