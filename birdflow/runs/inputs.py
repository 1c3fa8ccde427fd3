"""Copies of what a run is scored on (its tracks, the true chain), kept inside the run dir.

A run dir that carries its inputs evaluates the same after a move or on another machine. Files
above :data:`COPY_LIMIT_MB` stay where they are and are referred to by absolute path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from birdflow.io import atomic_path
from birdflow.runs.layout import INPUTS

COPY_LIMIT_MB = 64.0
TRUTH_FILES = ("model.nc", "data.nc")


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def adopt_inputs(run_dir: str | os.PathLike, tracks: str | os.PathLike | None,
                 truth: str | os.PathLike | None) -> dict:
    """Copy ``tracks`` (a CSV) and ``truth`` (a run dir) into ``<run>/inputs/`` when small.

    Returns the references to record in run.json (``tracks``, ``truth``): the copies, or the
    given paths when a copy is too large or the source is missing.
    """
    run_dir, refs = Path(run_dir), {"tracks": tracks, "truth": truth}
    if tracks is not None and Path(tracks).is_file() and _size_mb([Path(tracks)]) <= COPY_LIMIT_MB:
        dst = run_dir / INPUTS / "tracks.csv"
        if not dst.exists() or not os.path.samefile(tracks, dst):
            _copy(Path(tracks), dst)
        refs["tracks"] = dst
    if truth is not None:
        files = [Path(truth) / f for f in TRUTH_FILES]
        if all(f.is_file() for f in files) and _size_mb(files) <= COPY_LIMIT_MB:
            dst = run_dir / INPUTS / "truth"
            for f in files:
                if not (dst / f.name).exists() or not os.path.samefile(f, dst / f.name):
                    _copy(f, dst / f.name)
            refs["truth"] = dst
    return refs
