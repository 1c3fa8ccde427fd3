"""The species zoo: every zoo species generates, its truth is a valid cyclic chain, its tracks
load, and the property that makes it that kind of bird holds (birdflow.synthetic.zoo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from birdflow.data.bfdata import load_bfdata
from birdflow.data.tracks import load_tracks
from birdflow.errors import ConfigError
from birdflow.model.fitted import DATA_FILE
from birdflow.synthetic import ensure_synthetic
from birdflow.synthetic.flyway import N_WEEKS
from birdflow.synthetic.species import SyntheticSettings
from birdflow.synthetic.zoo import ZOO
from birdflow.synthetic.zoo_chain import build_zoo_chain

CONF = Path(__file__).resolve().parents[1] / "conf" / "species"
KINDS = sorted(p.stem for p in CONF.glob("zoo_*.yaml"))
BREEDING, WINTER = 26, 3  # S&T weeks on the breeding and on the wintering range


class Truth:
    """A zoo species' chain with what the property checks need (km, weeks 1..52)."""

    def __init__(self, kind: str):
        self.cfg = OmegaConf.load(CONF / f"{kind}.yaml")
        s = SyntheticSettings.from_species_cfg(self.cfg)
        self.chain = build_zoo_chain(ZOO[s.scene], s.seed, s.native_res_km)
        rows, cols = np.nonzero(self.chain.static_mask)
        self.xy = np.column_stack([self.chain.x[cols], self.chain.y[rows]]) / 1e3
        self.mu = self.chain.mu
        self.n = self.chain.dynamic_mask.sum(axis=1)

    def transition(self, t: int) -> np.ndarray:
        """(n_cells, n_cells) row-stochastic transition week t+1 -> t+2 (0-based t)."""
        dyn = self.chain.dynamic_mask
        a, b = np.flatnonzero(dyn[t]), np.flatnonzero(dyn[(t + 1) % N_WEEKS])
        joint = self.chain.marginals[t, : a.size, : b.size]
        out = np.zeros((dyn.shape[1], dyn.shape[1]))
        out[np.ix_(a, b)] = joint / joint.sum(axis=1, keepdims=True)
        return out

    def carry(self, w0: int, w1: int) -> np.ndarray:
        """(n_cells, n_cells) where a bird in week w0 is in week w1 (1-based, forward, cyclic)."""
        out, t = np.eye(self.xy.shape[0]), w0 - 1
        while t != w1 - 1:
            out, t = out @ self.transition(t), (t + 1) % N_WEEKS
        return out

    def centre(self, week: int) -> np.ndarray:
        return self.mu[week - 1] @ self.xy

    def weekly_move_km(self) -> np.ndarray:
        """(52,) expected distance a bird moves each week."""
        d = np.linalg.norm(self.xy[:, None] - self.xy[None], axis=-1)
        return np.array([(self.mu[t][:, None] * self.transition(t) * d).sum() for t in range(N_WEEKS)])


@pytest.fixture(scope="module")
def truths():
    return {k: Truth(k) for k in KINDS}


def test_zoo_has_the_kinds():
    assert set(KINDS) == {f"zoo_{k}" for k in ("longhaul", "shorthop", "loop", "leapfrog",
                                                "partial", "nomad", "resident")}
    assert set(ZOO) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_zoo_truth_is_a_cyclic_chain_and_small(truths, kind):
    tr = truths[kind]
    assert tr.n.max() <= 150  # trains on a CPU in minutes
    for t in range(N_WEEKS):
        u = (t + 1) % N_WEEKS
        joint = tr.chain.marginals[t, : tr.n[t], : tr.n[u]]
        np.testing.assert_allclose(tr.transition(t).sum(axis=1)[tr.chain.dynamic_mask[t]], 1.0)
        np.testing.assert_allclose(joint.sum(axis=1), tr.mu[t, tr.chain.dynamic_mask[t]], atol=1e-12)
        np.testing.assert_allclose(joint.sum(axis=0), tr.mu[u, tr.chain.dynamic_mask[u]], atol=1e-9)
        assert (joint > 0).all()
    traits = tr.cfg.traits
    assert {"body_mass_g", "migration_km", "family", "order"} <= set(traits)


@pytest.mark.parametrize("kind", KINDS)
def test_zoo_migration_distance_trait_matches_truth(truths, kind):
    tr = truths[kind]
    km = float(np.linalg.norm(tr.centre(BREEDING) - tr.centre(WINTER)))
    want = float(tr.cfg.traits.migration_km)
    if kind in ("zoo_resident", "zoo_nomad", "zoo_partial"):
        return  # no seasonal ranges, or (partial) the trait is the migrants' distance alone
    assert abs(km - want) <= 0.35 * want, (kind, km)


def test_zoo_kinds_differ_as_their_names_say(truths):
    dist = {k: float(np.linalg.norm(t.centre(BREEDING) - t.centre(WINTER))) for k, t in truths.items()}
    assert dist["zoo_longhaul"] > 2500 and 600 < dist["zoo_shorthop"] < 1500
    # loop: at the same stage of migration, spring is west of autumn (weeks 15 and 41)
    loop = truths["zoo_loop"]
    for spring, autumn in ((15, 41), (16, 40), (17, 39)):
        assert loop.centre(autumn)[0] - loop.centre(spring)[0] > 400
    # leap-frog: the northern breeders winter furthest south; in a chain migrant the reverse
    for kind, sign, least in (("zoo_leapfrog", -1, 0.5), ("zoo_longhaul", 1, 0.2)):
        tr = truths[kind]
        p = tr.mu[BREEDING - 1]
        winter_y = tr.carry(BREEDING, WINTER) @ tr.xy[:, 1]
        on = p > 1e-4
        r = np.corrcoef(tr.xy[on, 1], winter_y[on])[0, 1]
        assert sign * r > least, (kind, r)
    # partial: a share of the breeding population stays within 400 km, a share moves > 800 km
    part = truths["zoo_partial"]
    d = np.linalg.norm(part.xy[:, None] - part.xy[None], axis=-1)
    moved = (part.mu[BREEDING - 1][:, None] * part.carry(BREEDING, WINTER))
    stay, go = moved[d < 400].sum(), moved[d > 800].sum()
    assert stay > 0.2 and go > 0.2, (stay, go)
    assert truths["zoo_longhaul"].mu[BREEDING - 1] @ \
        (np.linalg.norm(truths["zoo_longhaul"].carry(BREEDING, WINTER) @ truths["zoo_longhaul"].xy
                        - truths["zoo_longhaul"].xy, axis=1) < 400) < 0.05
    # resident: a bird moves less than one cell (100 km) every week
    assert truths["zoo_resident"].weekly_move_km().max() < 100
    # nomad: the range centre moves most weeks of the year (a migrant's sits still for ~24)
    moving = {k: int((np.linalg.norm(np.diff(np.array([t.centre(w) for w in range(1, 54 - 1)]),
                                                      axis=0), axis=1) > 40).sum())
              for k, t in truths.items()}
    assert moving["zoo_nomad"] >= 40 and moving["zoo_longhaul"] <= 22, moving


@pytest.mark.parametrize("kind", KINDS)
def test_zoo_generates_and_its_tracks_load(tmp_path_factory, kind):
    cfg = OmegaConf.load(CONF / f"{kind}.yaml")
    cfg.synthetic.banding.n_birds, cfg.synthetic.banding.population = 60, 600  # fast
    cfg.synthetic.n_tracks = 20
    files = ensure_synthetic(cfg, tmp_path_factory.mktemp(kind))
    ds = load_bfdata(files.truth / DATA_FILE)
    chain_tracks = load_tracks(files.raster.parent / "tracks.csv", ds)
    banding = load_tracks(files.tracks, ds)
    assert chain_tracks.rows["bird_id"].nunique() == 20 and len(chain_tracks.intervals) > 0
    assert len(banding.intervals) > 0
    per_bird = banding.rows.groupby("bird_id").size()
    assert (per_bird == 2).any() and (per_bird > 2).any()  # banded pairs and GPS-like birds


def test_zoo_scene_errors_name_the_key():
    cfg = OmegaConf.load(CONF / "zoo_loop.yaml")
    cfg.synthetic.size = 2.0
    with pytest.raises(ConfigError, match="species.synthetic.size"):
        SyntheticSettings.from_species_cfg(cfg)
    cfg.synthetic.size, cfg.synthetic.scene = 1.0, "zoo_dodo"
    with pytest.raises(ConfigError, match="zoo_loop"):
        SyntheticSettings.from_species_cfg(cfg)
