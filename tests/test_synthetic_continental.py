"""The continental and regional scenes: sparse true chains (exactly zero beyond reach_km), files.

The default flyway scene must not change: its golden digests below were computed on main at
commit 0e874b6 (before scenes existed) with :func:`digest` on the settings ``TINY_FLYWAY``
(script: ensure_synthetic into a tmp dir, then the digests of the saved truth, the GeoTIFF
bands and the tracks CSV's lat/lon, exactly as the test does).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from omegaconf import OmegaConf

from birdflow.cli.synthetic import main
from birdflow.data.bfdata import distances_km
from birdflow.data.reach import resolve_radius_km
from birdflow.errors import ConfigError
from birdflow.model.fitted import BirdFlowModel, load_model
from birdflow.model.markov import WeekIndex
from birdflow.model.neighbours import build_neighbours
from birdflow.model.sparse import to_dense
from birdflow.synthetic.continental import transition_matrices
from birdflow.synthetic.flyway import _supports, build_flyway, scene_geometry
from birdflow.synthetic.scene import CONTINENTAL, FLYWAY, REGIONAL
from birdflow.synthetic.species import (
    SyntheticSettings,
    ensure_synthetic,
    sample_tracks,
    synthetic_truth,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"code": "synthetic", "version_year": 2022, "max_weekly_km": 250,
        "synthetic": {"seed": 0, "native_res_km": 150, "size": 0.5, "n_tracks": 30,
                      "scene": "continental"}}  # 52 cells, 31-36 per week, 0.1 s
TINY_FLYWAY = {"code": "synthetic", "version_year": 2022,
               "synthetic": {"seed": 0, "native_res_km": 100, "size": 0.5, "n_tracks": 20}}
# provenance: module docstring (main at 0e874b6, before this change)
GOLDEN_FLYWAY = {"key": "33219df1994a", "default_key": "d0798e40e741",
                 "truth": "6873f10a5da52aa3", "bands": "48df2ac1f05ae2e9",
                 "tracks": "c9580eda0616e833"}
REACH = CONTINENTAL.reach_km


def digest(*arrays) -> str:
    """sha256 (16 hex) of float64 arrays rounded to 12 decimals (robust to last-bit noise)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.round(np.asarray(a, np.float64), 12)).tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def truth():
    return synthetic_truth(TINY)


def test_flyway_scene_cache_key_and_outputs_are_unchanged(tmp_path):
    f = ensure_synthetic(TINY_FLYWAY, tmp_path)
    assert f.raster.parent.name == SyntheticSettings.from_species_cfg(TINY_FLYWAY).key()
    assert f.raster.parent.name == GOLDEN_FLYWAY["key"]
    assert SyntheticSettings.from_species_cfg({"code": "synthetic"}).key() == GOLDEN_FLYWAY["default_key"]
    m = load_model(f.truth)
    assert not m.sparse
    with rasterio.open(f.raster) as r:
        bands = r.read()
    tracks = pd.read_csv(f.tracks)
    assert digest(m.marginals, m.data["distr"].values) == GOLDEN_FLYWAY["truth"]
    assert digest(bands) == GOLDEN_FLYWAY["bands"]
    assert digest(tracks[["lat", "lon"]].values) == GOLDEN_FLYWAY["tracks"]
    # an explicit scene=flyway is the same settings, the continental one another folder
    explicit = {**TINY_FLYWAY, "synthetic": {**TINY_FLYWAY["synthetic"], "scene": "flyway"}}
    assert SyntheticSettings.from_species_cfg(explicit).key() == GOLDEN_FLYWAY["key"]
    other = {**TINY_FLYWAY, "synthetic": {**TINY_FLYWAY["synthetic"], "scene": "continental"}}
    assert SyntheticSettings.from_species_cfg(other).key() != GOLDEN_FLYWAY["key"]


def test_transitions_are_stochastic_and_exactly_zero_beyond_reach(truth):
    ds, model = truth
    geo = scene_geometry(0, 150, 0.5, CONTINENTAL)
    P = transition_matrices(geo, CONTINENTAL, 0.5)
    D = distances_km(ds)  # haversine (make_bfdata), independent of the KD-tree chords
    dyn = ds["dynamic_mask"].values
    n_kept = 0
    for t, Pt in enumerate(P):
        np.testing.assert_allclose(Pt.sum(axis=1), 1.0, rtol=0, atol=1e-13)
        a, b = np.flatnonzero(dyn[t]), np.flatnonzero(dyn[(t + 1) % 52])
        d = D[np.ix_(a, b)]
        dense = Pt.toarray()
        assert (dense[d > REACH + 1e-6] == 0).all()  # nothing beyond reach
        assert (dense[d < REACH - 1e-6] > 0).all()  # everything within reach kept
        # the model's joints hold exactly those pairs
        Mt = model.joint_dense_at(t)[: a.size, : b.size]
        np.testing.assert_array_equal(Mt > 0, dense > 0)
        n_kept += Pt.nnz
    assert n_kept == int((model.index.nbr >= 0).sum())
    assert n_kept < 0.5 * sum(dyn[t].sum() * dyn[(t + 1) % 52].sum() for t in range(52))


def test_cyclic_chain_is_stationary_and_marginals_are_consistent(truth):
    ds, model = truth
    mu = model.distrs()
    np.testing.assert_allclose(mu.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert ((mu > 0) == ds["dynamic_mask"].values).all()
    year = model.forecast_at(mu[0], 0, 52)  # mu_1 P_1 ... P_52 through the sparse rows
    np.testing.assert_allclose(year[-1], mu[0], rtol=0, atol=1e-10)
    assert np.abs(year[-1] - mu[0]).sum() < 1e-10
    np.testing.assert_allclose(year[:52], mu, rtol=0, atol=1e-10)  # mu_{t+1} = mu_t P_t
    for t in range(52):  # joints: column sums of M_t = row sums of M_{t+1}
        arrive = model.distr_at(t + 1) if t < 51 else model.distr_at(52)
        np.testing.assert_allclose(arrive, mu[(t + 1) % 52], rtol=1e-12, atol=1e-16)
    # the data are the truth (through float32 GeoTIFF bands)
    np.testing.assert_allclose(ds["distr"].values, mu, rtol=2e-7)


def test_auto_neighbourhood_keeps_exactly_the_truths_pairs(truth):
    ds, model = truth
    radius = resolve_radius_km("auto", 150.0, TINY)
    assert radius == REACH  # km at every size for this scene (size 0.5 here)
    nbr = build_neighbours(ds, WeekIndex.from_bfdata(ds), radius_km=radius)
    np.testing.assert_array_equal(nbr, model.index.nbr)
    flyway = {"code": "synthetic", "max_weekly_km": 1100, "synthetic": {"size": 0.5}}
    assert resolve_radius_km("auto", 100.0, flyway) == 550.0  # flyway: per unit of size


def test_sparse_tracks_move_within_reach_and_equal_dense_sampling(truth):
    ds, model = truth
    fixes = sample_tracks(model, 400, seed=3, max_gap_weeks=1)
    D = distances_km(ds)
    for _, bird in fixes.groupby("bird_id"):
        c = bird["cell"].values
        assert ds["dynamic_mask"].values[bird["week"].values - 1, c].all()
        assert D[c[:-1], c[1:]].max() <= REACH + 1e-6
    # the same chain densified draws the very same cells (same uniforms, same CDFs)
    dense = BirdFlowModel(data=ds, index=WeekIndex.from_bfdata(ds),
                          marginals=to_dense(model.marginals, model.index.nbr))
    pd.testing.assert_frame_equal(sample_tracks(dense, 400, seed=3, max_gap_weeks=1), fixes)


def test_files_round_trip_as_a_sparse_model(tmp_path, truth):
    _, model = truth
    f = ensure_synthetic(TINY, tmp_path)
    saved = load_model(f.truth)
    assert saved.sparse and saved.hyperparameters["scene"] == "continental"
    np.testing.assert_array_equal(saved.index.nbr, model.index.nbr)
    np.testing.assert_allclose(saved.marginals, model.marginals, rtol=1e-6, atol=1e-12)
    assert pd.read_csv(f.tracks)["bird_id"].nunique() == 30


def test_a_reach_that_strands_cells_names_the_week_and_counts():
    short = dataclasses.replace(CONTINENTAL, reach_km=100.0)
    with pytest.raises(ConfigError, match=r"reach_km=100 breaks transition week \d+ -> \d+: "
                       r"\d+ of \d+ week-\d+ cells .* \d+ of \d+ week-\d+ cells .*reach_km >= \d+"):
        build_flyway(0, 150, 0.5, short)


def test_scene_presets_describe_a_short_distance_migrant():
    centres = _supports(np.zeros(1), np.zeros(1), 1.0, CONTINENTAL)[1]
    weekly_km = np.linalg.norm(np.diff(centres, axis=0, append=centres[:1]), axis=1) / 1e3
    assert 50 < weekly_km.max() <= 250  # the range moves, slowly
    assert 2 * CONTINENTAL.semi_across_km[0] >= 6 * CONTINENTAL.reach_km  # ranges >> a hop
    assert 80 <= CONTINENTAL.sigma_km <= 100 and CONTINENTAL.pull >= 0.95
    assert FLYWAY.reach_km is None and FLYWAY.hop_scales_with_size


def test_unknown_scene_is_a_config_error():
    bad = {**TINY, "synthetic": {**TINY["synthetic"], "scene": "island"}}
    with pytest.raises(ConfigError, match=r"species.synthetic.scene='island'.*continental"):
        SyntheticSettings.from_species_cfg(bad)


@pytest.mark.parametrize("scene", [CONTINENTAL, REGIONAL], ids=lambda s: s.name)
def test_species_yaml_reach_and_resolution_match_the_scene(scene):
    yaml = OmegaConf.load(ROOT / f"conf/species/synthetic_{scene.name}.yaml")
    s = SyntheticSettings.from_species_cfg(yaml)
    assert s.scene == scene.name and yaml.res_km == s.native_res_km
    assert resolve_radius_km("auto", yaml.res_km, OmegaConf.to_container(yaml)) == scene.reach_km


def test_regional_scene_is_slower_and_shorter_hopping_than_the_continental_one():
    weekly = {}
    for scene in (CONTINENTAL, REGIONAL):
        centres = _supports(np.zeros(1), np.zeros(1), 1.0, scene)[1]
        weekly[scene.name] = np.linalg.norm(np.diff(centres, axis=0), axis=1).max() / 1e3
    assert 20 < weekly["regional"] <= 0.5 * weekly["continental"]
    assert REGIONAL.reach_km < CONTINENTAL.reach_km and REGIONAL.sigma_km < CONTINENTAL.sigma_km
    assert (REGIONAL.semi_along_km, REGIONAL.semi_across_km) == (
        CONTINENTAL.semi_along_km, CONTINENTAL.semi_across_km)  # the same ranges


def test_regional_truth_is_stochastic_and_exactly_zero_beyond_its_reach():
    chain = build_flyway(0, 50, 0.5, REGIONAL)  # 50 km cells: 2 cells of reach
    xyz_lens = [(Pt.sum(axis=1), Pt) for Pt in transition_matrices(
        scene_geometry(0, 50, 0.5, REGIONAL), REGIONAL, 0.5)]
    for t, (rows, Pt) in enumerate(xyz_lens):
        np.testing.assert_allclose(rows, 1.0, rtol=0, atol=1e-13)
        assert Pt.nnz == int((chain.nbr[t] >= 0).sum())
    per_row = (chain.nbr >= 0).sum(axis=2)
    assert 0 < per_row.max() <= np.pi * (REGIONAL.reach_km / 50 + 1) ** 2


def test_cli_generates_the_continental_species_and_prints_its_sparse_truth(tmp_path, capsys):
    files = main(["species=synthetic_continental", "species.synthetic.native_res_km=150",
                  "species.res_km=150", "species.synthetic.size=0.5",
                  "species.synthetic.n_tracks=5", f"data.root={tmp_path}"])
    out = capsys.readouterr().out
    assert "scene continental" in out and "cells per week 31-36" in out
    assert "truth: sparse within 250 km" in out and "parameters 12,497" in out
    assert load_model(files.truth).sparse


@pytest.mark.slow
def test_cpu_size_scene_needs_more_than_24_gb_dense_and_is_really_sparse():
    """~10 s: the conf/species/synthetic_continental.yaml size (figures in its comments)."""
    chain = build_flyway(0, 30, 1.0, CONTINENTAL)
    n = chain.dynamic_mask.sum(axis=1)
    dense = int(n[0] + (n * np.roll(n, -1)).sum())
    assert 3000 <= n.max() <= 3600
    assert dense / 23_224_801 > 24  # BirdFlowR's parameters-per-GB rule
    per_row = (chain.nbr >= 0).sum(axis=2)
    assert per_row[per_row > 0].mean() <= 0.12 * n.max()


@pytest.mark.slow
def test_regional_yaml_size_has_more_than_16000_cells_per_week_and_fits_a_cpu():
    """~15 s, 3 GB: conf/species/synthetic_regional.yaml's size (README "Continental ...")."""
    chain = build_flyway(0, 20, 1.5, REGIONAL)
    n = chain.dynamic_mask.sum(axis=1)
    assert n.min() >= 16_000
    params = int((chain.nbr >= 0).sum()) + int(n[0])
    assert params < 80_000_000  # ~72 neighbours per row: the run fits in a 24 GB machine
    assert (chain.nbr >= 0).sum(axis=2).max() <= np.pi * (REGIONAL.reach_km / 20 + 1) ** 2
