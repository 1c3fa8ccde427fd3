"""The gain of a trained model over the S&T-only null on its tracks, as every run reports it.

The S&T-only null forecasts a bird's end cell by the S&T distribution of its end week alone.
The gain is the mean over scored intervals of ``ll - null_ll`` (nats per interval), the same
figure and intervals as ``metrics.json["summary"]["mean_ll_gain"]``: a model that does not
beat it has learned nothing about movement that the maps do not already say.
"""

from __future__ import annotations

import logging
from pathlib import Path

from birdflow.model.fitted import BirdFlowModel
from birdflow.runs import read_run_info, run_path, write_run_info

log = logging.getLogger("birdflow.evaluation.gain")

GAIN_KEY = "gain_over_null"  # in run.json


def gain_over_null(run_dir: Path, model: BirdFlowModel, summary: dict | None = None) -> dict | None:
    """The model's mean interval log-likelihood against the S&T null's on the run's tracks.

    Args:
        run_dir: the run; its ``run.json`` names the tracks (the synthetic species' true
            tracks, ``species.tracks`` or ``tracks=``).
        model: the fitted model.
        summary: ``metrics.json["summary"]`` when the run was evaluated (its interval scores
            are reused); None scores the tracks alone (no fit metrics, no win probability).

    Returns:
        {"gain", "mean_ll", "mean_null_ll", "n_intervals", "tracks"}, or None when the run has
        no tracks or none of their intervals could be scored.
    """
    tracks = run_path(run_dir, "tracks")
    if tracks is None:
        return None
    if summary is None:
        from birdflow.data.tracks import load_tracks
        from birdflow.evaluation.intervals import interval_summary, score_intervals

        t = load_tracks(tracks, model.data, cyclic=model.cyclic)
        summary = interval_summary(score_intervals(model, t.intervals, win_prob=False))
    if not summary.get("n_intervals") or summary.get("mean_ll_gain") is None:
        return None
    return {"gain": summary["mean_ll_gain"], "mean_ll": summary["mean_ll"],
            "mean_null_ll": summary["mean_null_ll"], "n_intervals": summary["n_intervals"],
            "tracks": str(read_run_info(run_dir).get("tracks"))}


def report_gain(run_dir: Path, gain: dict | None) -> str | None:
    """Store the gain in ``run.json`` and print it; one warning line when it is negative."""
    if gain is None:
        return None
    write_run_info(run_dir, **{GAIN_KEY: gain})
    line = (f"gain over the S&T null: {gain['gain']:+.3f} nats per interval (model "
            f"{gain['mean_ll']:.3f}, S&T null {gain['mean_null_ll']:.3f}; {gain['n_intervals']:,} "
            f"intervals of {gain['tracks']})")
    if gain["gain"] < 0:
        line = (f"{line}: below the null, these weights fit the moves worse than the S&T maps "
                "alone; tune them (birdflow tune with the same species and model settings) and "
                "train with weights=<tune dir>")
        log.warning(line)
    else:
        print(line)
    return line
