"""Banding birds over the flyway scene: fidelity, stopovers, recoveries, marginals, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from birdflow.cli.synthetic import main
from birdflow.data.bfdata import load_bfdata
from birdflow.data.tracks import load_tracks
from birdflow.errors import ConfigError
from birdflow.model.fitted import DATA_FILE
from birdflow.synthetic.banding import (
    BandingSettings,
    occupancy_tv,
    passage_stays,
    sample_tv,
    season_of_week,
    simulate,
)
from birdflow.synthetic.flyway import N_WEEKS
from birdflow.synthetic.recoveries import banding_fixes, simulate_tracks
from birdflow.synthetic.species import SyntheticSettings, ensure_synthetic, synthetic_truth

SCENE = {"code": "synthetic", "version_year": 2022,
         "synthetic": {"seed": 0, "native_res_km": 100, "size": 1.0, "n_tracks": 200}}
SMALL = BandingSettings(n_birds=300, population=3000, band_years=1, max_years=2)


@pytest.fixture(scope="module")
def truth():
    return synthetic_truth(SCENE)[1]


@pytest.fixture(scope="module")
def pop(truth):
    return simulate(truth, SMALL, SMALL.population, SMALL.n_years, np.random.default_rng(3))


@pytest.fixture(scope="module")
def fixes(pop):
    return banding_fixes(pop, SMALL, np.random.default_rng(4), 2022)


def test_each_bird_sits_on_its_own_breeding_and_wintering_cell_every_year(pop, truth):
    weeks = np.arange(pop.cell.shape[1]) % N_WEEKS
    home_b, home_w = pop.on_breeding[weeks], pop.on_wintering[weeks]
    assert home_b.sum() == 12 * SMALL.n_years and home_w.sum() == 16 * SMALL.n_years
    assert (pop.cell[:, home_b] == pop.breeding[:, None]).all()
    assert (pop.cell[:, home_w] == pop.wintering[:, None]).all()
    # connectivity 0: the winter cell says nothing about the breeding cell (chi-square test of
    # independence on the two cells' halves of the range, along x)
    x = truth.data["cell_x"].values
    table = np.histogram2d(x[pop.breeding] > np.median(x[pop.breeding]),
                           x[pop.wintering] > np.median(x[pop.wintering]), bins=2)[0]
    assert stats.chi2_contingency(table)[1] > 1e-3
    # what no Markov chain of these maps does: the scene's own chain brings a breeding bird
    # back to its cell a year later with a small probability; the birds always come back
    d = np.eye(truth.n_cells)[pop.breeding[:100]]  # 0.015 on average over the breeding map
    t0 = int(np.flatnonzero(pop.on_breeding)[0])
    for t in range(t0, t0 + N_WEEKS):
        d = d @ truth.transition_at(t % N_WEEKS)
    assert d[np.arange(100), pop.breeding[:100]].mean() < 0.05


def test_passage_stays_are_not_geometric(pop):
    stays = passage_stays(pop)
    assert stays.min() == 1 and stays.size > 10 * SMALL.population
    mean = stays.mean()
    geometric_var = mean * (mean - 1)  # the variance of a geometric on 1, 2, ... with that mean
    assert stays.var() < 0.7 * geometric_var
    k = np.arange(1, 6)
    observed = np.r_[[(stays == j).sum() for j in k[:-1]], (stays >= k[-1]).sum()]
    p = 1 / mean
    expected = np.r_[p * (1 - p) ** (k[:-1] - 1), (1 - p) ** (k[-1] - 1)] * stays.size
    assert stats.chisquare(observed, expected, ddof=1).pvalue < 1e-12
    assert observed[1] > 1.3 * expected[1]  # too many 2-week stays: stopovers of 2+ weeks


def test_two_fixes_per_banded_bird_within_the_gap_window(fixes):
    per_bird = fixes.groupby("bird_id")["kind"].agg(list)
    assert len(per_bird) == SMALL.n_birds and (per_bird.map(tuple) == ("band", "recovery")).all()
    days = fixes.groupby("bird_id")["date"].agg(lambda d: (d.iloc[1] - d.iloc[0]).days)
    assert days.min() >= 30 and days.max() <= round(365.25 * SMALL.max_years)
    assert (days > 365).mean() > 0.2


def test_recoveries_fall_mostly_in_the_nonbreeding_season(fixes):
    season = season_of_week()
    rec = season[fixes.loc[fixes["kind"] == "recovery", "week"] - 1]
    band = season[fixes.loc[fixes["kind"] == "band", "week"] - 1]
    assert np.mean(rec == 2) > 0.6 and np.mean(band == 2) < 0.2
    assert np.mean(band != 2) > 0.8  # banded in the breeding season or on passage


def test_population_fills_the_st_maps_within_the_stated_tolerance(pop, truth):
    mu = truth.distrs()
    tv = occupancy_tv(pop, mu)
    noise = sample_tv(mu, SMALL.population, np.random.default_rng(0))
    # the residence weeks' own-cell maps differ from the week's map by at most 0.07 (week 47,
    # as the nonbreeding map settles); otherwise what is left is sampling noise
    assert tv.mean() <= noise.mean() + 0.01
    assert tv.max() <= 0.07 + 3 * noise.std() + noise.mean()


def test_same_seed_same_tracks_new_seed_different(truth):
    s = BandingSettings(n_birds=40, population=400, band_years=1, max_years=1, gps_share=0.05)
    a, fa = simulate_tracks(truth, s, 2022)
    b, fb = simulate_tracks(truth, s, 2022)
    assert a.equals(b) and fa == fb
    c, _ = simulate_tracks(truth, BandingSettings(**{**s.__dict__, "seed": 1}), 2022)
    assert not a[["lat", "lon"]].equals(c[["lat", "lon"]])
    gps = a[a["kind"] == "gps"]
    assert gps["bird_id"].nunique() == 2 and (gps.groupby("bird_id").size() == N_WEEKS).all()
    assert (gps.groupby("bird_id")["date"].diff().dropna().dt.days.between(1, 13)).all()


def test_gps_birds_only_summarise_without_empty_means(truth):
    import warnings

    s = BandingSettings(n_birds=4, population=400, band_years=1, max_years=1, gps_share=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" from the absent banded birds
        fixes, summary = simulate_tracks(truth, s, 2022)
    assert summary["banded_birds"] == 0 and summary["gps_birds"] == 4
    assert summary["band_seasons"] == summary["recovery_seasons"] == summary["gap_days"] == {}
    assert (fixes["kind"] == "gps").all()


def test_files_share_the_scene_and_load_tracks_reads_the_intervals(tmp_path, capsys):
    small = ["species.synthetic.size=0.6", "species.synthetic.n_tracks=5", f"data.root={tmp_path}"]
    node = {"n_birds": 60, "population": 600, "band_years": 1, "max_years": 2, "gps_share": 0.05}
    files = main(["species=synthetic_banding", *small,
                  *(f"species.synthetic.banding.{k}={v}" for k, v in node.items())])
    out = capsys.readouterr().out
    assert "57 banded (2 fixes each), 3 GPS-like" in out and "marginal check" in out
    plain = main(small)
    assert files.raster == plain.raster and files.truth == plain.truth
    assert files.tracks != plain.tracks and files.tracks.parent.parent.name == "banding"
    assert files.tracks.read_text().splitlines()[0] == "bird_id,date,lat,lon"
    iv = load_tracks(files.tracks, load_bfdata(files.truth / DATA_FILE)).intervals
    assert (iv["exclude"] == "").all()
    per_bird = iv.groupby("bird_id").size()
    assert (per_bird[per_bird.index.str.startswith("band")] == 1).sum() == 57
    assert (per_bird[per_bird.index.str.startswith("gps")] == N_WEEKS - 1).sum() == 3
    assert (iv["wrapped_years"] > 0).any() and iv["lag"].between(1, N_WEEKS).all()


def test_species_yaml_is_the_synthetic_scene_with_the_default_birds():
    conf = Path(__file__).resolve().parents[1] / "conf/species"
    banding, plain = (OmegaConf.to_container(OmegaConf.load(conf / f"{name}.yaml"))
                      for name in ("synthetic_banding", "synthetic"))
    assert BandingSettings.from_node(banding["synthetic"].pop("banding")) == BandingSettings()
    assert SyntheticSettings.from_species_cfg(banding) == SyntheticSettings.from_species_cfg(plain)
    # every other key as well: preprocessing gives the same BirdFlowData, from the same cache file
    assert {k: v for k, v in banding.items() if k != "synthetic"} == \
        {k: v for k, v in plain.items() if k != "synthetic"}


@pytest.mark.parametrize("node, key", [({"n_birds": 1}, "n_birds"),
                                       ({"band_shares": [1, 0]}, "band_shares"),
                                       ({"stop_mean_weeks": 1.5}, "stop_mean_weeks"),
                                       ({"colour": "red"}, "colour")])
def test_bad_banding_settings_name_the_key(node, key):
    cfg = {**SCENE, "synthetic": {**SCENE["synthetic"], "banding": node}}
    with pytest.raises(ConfigError, match=f"species.synthetic.banding.*{key}"):
        ensure_synthetic(cfg, "/nonexistent")
