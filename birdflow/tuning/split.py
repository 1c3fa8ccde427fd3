"""Split tracked birds into a tuning and a validation set (by bird, deterministic from a seed).

Whole birds go to one side, so no bird's intervals inform both the hyperparameters and the
score quoted for them. The tuning split drives the outer loss; the validation split is never
seen by tuning and is what every report quotes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from birdflow.errors import DataError


@dataclass(frozen=True)
class BirdSplit:
    """Bird ids of each split (sorted) and the intervals of each (``exclude == ''`` only)."""

    tuning_birds: tuple[str, ...]
    validation_birds: tuple[str, ...]
    tuning: pd.DataFrame
    validation: pd.DataFrame


def split_birds(intervals: pd.DataFrame, seed: int, tuning_fraction: float = 0.5, *,
                min_intervals: int = 20, source: str = "tracks") -> BirdSplit:
    """Assign each bird with scorable intervals to the tuning or validation split.

    Args:
        intervals: :func:`birdflow.data.tracks.make_intervals` output (``bird_id``, ``exclude``).
        seed: the permutation of bird ids is ``np.random.default_rng(seed)`` of the sorted ids.
        tuning_fraction: share of birds (rounded, at least one each side) used for tuning.
        min_intervals: each split needs at least this many scorable intervals.
        source: the tracks file, named in messages.

    Raises:
        DataError: fewer than two birds, or a split with fewer than ``min_intervals`` intervals
            (the message gives the counts).
    """
    if not 0.0 < tuning_fraction < 1.0:
        raise DataError(f"tune.tuning_fraction: must be in (0, 1), got {tuning_fraction}")
    ok = intervals[intervals["exclude"] == ""]
    birds = np.array(sorted(ok["bird_id"].astype(str).unique()))
    if len(birds) < 2:
        raise DataError(f"{source}: {len(birds)} bird(s) with scorable intervals ({len(ok)} "
                        "intervals); tuning needs at least two birds (one tuning, one validation)")
    perm = np.random.default_rng(seed).permutation(len(birds))
    n_tune = int(np.clip(round(tuning_fraction * len(birds)), 1, len(birds) - 1))
    tune_ids, val_ids = sorted(birds[perm[:n_tune]]), sorted(birds[perm[n_tune:]])
    ids = ok["bird_id"].astype(str)
    tuning, validation = ok[ids.isin(tune_ids)], ok[ids.isin(val_ids)]
    for name, part, n_birds in (("tuning", tuning, len(tune_ids)),
                                ("validation", validation, len(val_ids))):
        if len(part) < min_intervals:
            raise DataError(
                f"{source}: the {name} split has {len(part)} usable intervals from {n_birds} "
                f"birds (of {len(ok)} usable, {len(intervals)} in all); at least {min_intervals} "
                "are needed: supply more tracks, change tune.tuning_fraction or lower "
                "tune.min_intervals")
    return BirdSplit(tuple(tune_ids), tuple(val_ids), tuning.reset_index(drop=True),
                     validation.reset_index(drop=True))


def write_tracks_subset(rows: pd.DataFrame, birds: tuple[str, ...], path) -> None:
    """Write the CSV rows (``bird_id,date,lat,lon``) of some birds, atomically."""
    from birdflow.io import write_text_atomic

    sub = rows[rows["bird_id"].astype(str).isin(birds)].sort_values("line")
    out = sub[["bird_id", "date", "lat", "lon"]].copy()
    out["date"] = pd.to_datetime(out["date"]).dt.strftime("%Y-%m-%d")
    write_text_atomic(path, out.to_csv(index=False))
