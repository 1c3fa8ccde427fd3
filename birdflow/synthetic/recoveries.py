"""Band-and-recover pairs (and optional GPS-like birds) from simulated individuals.

A banded bird yields exactly two fixes: where and when it was banded (mostly in the breeding
season or on passage, ``band_shares``) and where and when it was recovered, ``min_days`` to
``max_years`` later (years ~ ``survival`` ** k, the season by ``recovery_shares``: mostly in the
nonbreeding season, as hunting and winter recoveries are). A GPS-like bird (``gps_share``) is
fixed every week for a year. The trajectories come from :func:`birdflow.synthetic.banding.simulate`;
:func:`ensure_banding` writes ``tracks.csv`` (``bird_id,date,lat,lon``) and ``summary.json``
under ``<synthetic folder>/banding/<hash of the settings>/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from birdflow.data.grid import to_lonlat
from birdflow.io import atomic_path, write_text_atomic
from birdflow.model.fitted import BirdFlowModel
from birdflow.synthetic.banding import (
    BandingSettings,
    Population,
    occupancy_tv,
    passage_stays,
    sample_tv,
    season_of_week,
    simulate,
)
from birdflow.synthetic.flyway import N_WEEKS

BANDING_VERSION = 1  # bump when the simulated tracks change for the same settings
SEASONS = ("breeding", "migration", "nonbreeding")


def _pick_weeks(shares, season: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """0-based weeks of the year: a season by ``shares``, then a week of it uniformly."""
    p = np.asarray(shares, float) / np.sum(shares)
    which = rng.choice(3, size, p=p)
    out = np.empty(size, dtype=np.int64)
    for k in range(3):
        weeks = np.flatnonzero(season == k)
        out[which == k] = rng.choice(weeks, int((which == k).sum()))
    return out


def _dates(absolute: np.ndarray, version_year: int, rng: np.random.Generator) -> np.ndarray:
    """Dates of absolute weeks (0 = week 1 of ``version_year``): the week centre +- 3 days."""
    year = version_year + absolute // N_WEEKS
    jan1 = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    return jan1 + (3 + 7 * (absolute % N_WEEKS) + rng.integers(-3, 4, absolute.size)).astype(
        "timedelta64[D]")


def banding_fixes(pop: Population, s: BandingSettings, rng: np.random.Generator,
                  version_year: int) -> pd.DataFrame:
    """Fixes of the first ``s.n_birds`` birds: ``bird_id, date, week, cell, kind``.

    ``kind`` is ``band``, ``recovery`` or ``gps``; one row per fix, by bird then date.
    """
    season = season_of_week()
    n_gps = int(round(s.gps_share * s.n_birds))
    n_band = s.n_birds - n_gps
    band = rng.integers(0, s.band_years, n_band) * N_WEEKS + _pick_weeks(
        s.band_shares, season, rng, n_band)
    band_date = _dates(band, version_year, rng)
    years = np.arange(s.max_years + 1)
    p_year = s.survival ** years / np.sum(s.survival ** years)
    recovery = np.full(n_band, -1)
    rec_date = band_date.copy()
    todo = np.arange(n_band)
    while todo.size:  # redraw the recoveries outside [min_days, max_years]
        a = band[todo] // N_WEEKS * N_WEEKS + rng.choice(years, todo.size, p=p_year) * N_WEEKS \
            + _pick_weeks(s.recovery_shares, season, rng, todo.size)
        d = _dates(a, version_year, rng)
        gap = (d - band_date[todo]).astype(int)
        ok = (gap >= s.min_days) & (gap <= round(365.25 * s.max_years))
        recovery[todo[ok]], rec_date[todo[ok]] = a[ok], d[ok]
        todo = todo[~ok]
    gps_start = rng.integers(0, s.band_years * N_WEEKS, n_gps)
    gps = (gps_start[:, None] + np.arange(N_WEEKS)[None, :]).ravel()
    bird = np.r_[np.arange(n_band), np.arange(n_band), np.repeat(np.arange(n_band, s.n_birds),
                                                                 N_WEEKS)]
    absolute = np.r_[band, recovery, gps]
    width = len(str(s.n_birds))
    names = [f"band{b + 1:0{width}d}" if b < n_band else f"gps{b + 1:0{width}d}" for b in bird]
    out = pd.DataFrame({"bird_id": names,
                        "date": pd.DatetimeIndex(np.r_[band_date, rec_date,
                                                       _dates(gps, version_year, rng)]),
                        "week": absolute % N_WEEKS + 1, "cell": pop.cell[bird, absolute],
                        "kind": ["band"] * n_band + ["recovery"] * n_band + ["gps"] * gps.size})
    return out.sort_values(["bird_id", "date"], kind="stable").reset_index(drop=True)


def with_positions(fixes: pd.DataFrame, truth: BirdFlowModel, rng: np.random.Generator) -> pd.DataFrame:
    """Add ``lat, lon``: a uniform point inside each fix's cell (degrees WGS84)."""
    ds = truth.data
    res_m = float(ds.attrs["res_km"]) * 1e3
    c = fixes["cell"].to_numpy()
    x = ds["cell_x"].values[c] + (rng.random(c.size) - 0.5) * 0.999 * res_m
    y = ds["cell_y"].values[c] + (rng.random(c.size) - 0.5) * 0.999 * res_m
    lon, lat = to_lonlat(x, y, ds.attrs["crs_wkt"])
    return fixes.assign(lat=lat, lon=lon)


def summarise(fixes: pd.DataFrame, pop: Population, mu: np.ndarray, noise: np.ndarray) -> dict:
    """The figures ``birdflow synthetic`` prints: birds, gaps, seasons, stays, marginal check."""
    season = season_of_week()
    band, rec = fixes[fixes["kind"] == "band"], fixes[fixes["kind"] == "recovery"]
    gap = (rec["date"].to_numpy() - band["date"].to_numpy()) / np.timedelta64(1, "D")
    stays = passage_stays(pop)
    geo_var = stays.mean() * (stays.mean() - 1)  # a geometric's variance at the same mean
    tv = occupancy_tv(pop, mu)

    def shares(kind):
        w = fixes.loc[fixes["kind"] == kind, "week"].to_numpy() - 1
        if not len(w):  # GPS-like birds only (gps_share 1)
            return {}
        return {name: round(float(np.mean(season[w] == k)), 3) for k, name in enumerate(SEASONS)}

    return {
        "banded_birds": len(band), "gps_birds": int(fixes.loc[fixes["kind"] == "gps", "bird_id"].nunique()),
        "fixes": len(fixes), "intervals": len(fixes) - fixes["bird_id"].nunique(),
        "gap_days": {q: round(float(np.quantile(gap, p)), 1) for q, p in
                     (("min", 0), ("q25", .25), ("median", .5), ("q75", .75), ("max", 1))}
        if len(gap) else {},
        "gap_over_a_year": round(float(np.mean(gap > 365)), 3) if len(gap) else None,
        "band_seasons": shares("band"), "recovery_seasons": shares("recovery"),
        "passage_stay_weeks": {"pmf_1_to_5": [round(float(np.mean(stays == k)), 3) for k in range(1, 6)],
                               "mean": round(float(stays.mean()), 3), "var": round(float(stays.var()), 3),
                               "geometric_var": round(float(geo_var), 3)},
        "occupancy_tv": {"birds": len(pop.cell), "mean": round(float(tv.mean()), 4),
                         "max": round(float(tv.max()), 4), "max_week": int(tv.argmax()) + 1,
                         "iid_sample_mean": round(float(noise.mean()), 4),
                         "per_week": [round(float(v), 4) for v in tv]},
    }


def simulate_tracks(truth: BirdFlowModel, s: BandingSettings, version_year: int) -> tuple[pd.DataFrame, dict]:
    """The tracked birds' fixes (with positions) and the summary, deterministic in ``s.seed``."""
    rng = np.random.default_rng([s.seed, 7])
    pop = simulate(truth, s, s.population, s.n_years, rng)
    tracked = Population(pop.cell[: s.n_birds], pop.breeding[: s.n_birds],
                         pop.wintering[: s.n_birds], pop.on_breeding, pop.on_wintering)
    fixes = with_positions(banding_fixes(tracked, s, rng, version_year), truth, rng)
    mu = truth.distrs()
    return fixes, summarise(fixes, pop, mu, sample_tv(mu, s.population, rng))


def banding_key(s: BandingSettings, scene_key: str) -> str:
    text = json.dumps({**asdict(s), "scene": scene_key, "version": BANDING_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_banding(folder: Path, s: BandingSettings, truth_loader, version_year: int) -> Path:
    """``folder/banding/<key>/tracks.csv`` (with ``summary.json``), generated unless complete.

    ``truth_loader()`` returns the scene's true chain (only called when generating).
    """
    out = folder / "banding" / banding_key(s, folder.name)
    tracks, summary, marker = out / "tracks.csv", out / "summary.json", out / "settings.json"
    if marker.exists() and tracks.exists() and summary.exists():
        return tracks
    marker.unlink(missing_ok=True)
    fixes, figures = simulate_tracks(truth_loader(), s, version_year)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(tracks) as tmp:
        fixes[["bird_id", "date", "lat", "lon"]].assign(
            date=fixes["date"].dt.strftime("%Y-%m-%d")).to_csv(tmp, index=False, float_format="%.6f")
    write_text_atomic(summary, json.dumps(figures, indent=2) + "\n")
    write_text_atomic(marker, json.dumps({**asdict(s), "scene": folder.name,
                                          "version": BANDING_VERSION}, indent=2) + "\n")
    return tracks


def describe_banding(tracks: Path, ds) -> None:
    """Print the banding birds' summary (``summary.json``) and how ``load_tracks`` reads them."""
    from birdflow.data.tracks import load_tracks

    f = json.loads((tracks.parent / "summary.json").read_text())
    iv = load_tracks(tracks, ds).intervals
    ok = iv[iv["exclude"] == ""]
    g, st, tv = f["gap_days"], f["passage_stay_weeks"], f["occupancy_tv"]
    print(f"banding birds: {f['banded_birds']} banded (2 fixes each), {f['gps_birds']} GPS-like; "
          f"{f['fixes']} fixes, {f['intervals']} intervals, {len(ok)} scorable "
          f"(excluded: {dict(iv.loc[iv['exclude'] != '', 'exclude'].value_counts())})")
    if g:
        print(f"band -> recovery gap (days): min {g['min']:g}, quartiles {g['q25']:g} / "
              f"{g['median']:g} / {g['q75']:g}, max {g['max']:g}; {f['gap_over_a_year']:.0%} "
              "over a year")
    if f["band_seasons"]:
        print("seasons (breeding / migration / nonbreeding): banding " + " / ".join(
            f"{v:.0%}" for v in f["band_seasons"].values()) + ", recovery " + " / ".join(
            f"{v:.0%}" for v in f["recovery_seasons"].values()))
    print(f"scored on the cyclic year: lag median {ok['lag'].median():g} weeks, "
          f"{(ok['wrapped_years'] > 0).mean():.0%} of the intervals leave out whole years "
          f"(up to {ok['wrapped_years'].max()})")
    print(f"passage stays (weeks in one cell): P(1..5) {st['pmf_1_to_5']}, mean {st['mean']:g}, "
          f"variance {st['var']:g} (a geometric with that mean: {st['geometric_var']:g})")
    print(f"marginal check, {tv['birds']:,} simulated birds vs the S&T maps: weekly TV mean "
          f"{tv['mean']:.3f}, max {tv['max']:.3f} (week {tv['max_week']}); an i.i.d. sample of "
          f"as many birds from the maps: mean {tv['iid_sample_mean']:.3f}")
