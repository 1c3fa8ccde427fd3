"""``run.json``: a run's status and references, with paths that survive moving the run dir.

Fields named in :data:`PATH_FIELDS` are paths. They are stored relative to the run dir when
they point inside it and absolute otherwise (a relative path given by a caller is taken
relative to the caller's working directory first), and :func:`run_path` turns them back into
usable paths whatever the current working directory is.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import UTC, datetime
from pathlib import Path

from birdflow.errors import DataError
from birdflow.io import write_text_atomic
from birdflow.runs.layout import RUN_JSON

PATH_FIELDS = ("data_path", "tracks", "truth", "imported_from", "sparsified_from", "tuned_by",
               "tune_dir")


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a ``run.json`` (a run, a tune dir, an import)."""
    return (Path(path) / RUN_JSON).exists()


def find_run_dirs(root: str | os.PathLike) -> set[Path]:
    """Every run dir (a folder with a ``run.json``) at or below ``root``."""
    return {p.parent for p in Path(root).rglob(RUN_JSON)}


def read_run_info(run_dir: str | os.PathLike) -> dict:
    """The run's ``run.json`` as stored (empty dict for a model folder without one)."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run training or fix the file") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: not a JSON object; re-run training or fix the file")
    return info


def _stored(run_dir: Path, value) -> str | None:
    """A path as run.json keeps it: relative inside the run dir (or to a folder holding it,
    as a tune dir holds its model), else absolute."""
    if value is None or value == "" or str(value).startswith("<"):  # "<in memory>"
        return None if value in (None, "") else str(value)
    path = Path(os.path.abspath(Path(value).expanduser()))
    here = Path(os.path.abspath(run_dir))
    if path == here or path.is_relative_to(here) or here.is_relative_to(path):
        return Path(os.path.relpath(path, here)).as_posix()
    return str(path)


def write_run_info(run_dir: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into ``run.json`` (atomic) and return the result as stored."""
    info = read_run_info(run_dir)
    info.update({k: _stored(Path(run_dir), v) if k in PATH_FIELDS else v
                 for k, v in fields.items()})
    write_text_atomic(Path(run_dir) / RUN_JSON, json.dumps(info, indent=2, default=str) + "\n")
    return info


def run_path(run_dir: str | os.PathLike, key: str, info: dict | None = None) -> Path | None:
    """The path ``run.json[key]`` refers to, usable from any working directory (None if unset).

    Relative values are relative to the run dir; a run dir written before paths were stored
    this way may hold a path relative to the directory it was trained in, used as a fallback.
    """
    info = read_run_info(run_dir) if info is None else info
    value = info.get(key)
    if not value or str(value).startswith("<"):
        return None
    path = Path(value)
    if path.is_absolute():
        return path
    inside = Path(os.path.abspath(run_dir)) / path
    return inside if inside.exists() or not path.exists() else path


def record_failure(run_dir: str | os.PathLike, exc: BaseException) -> None:
    """Mark a run that raised as ``failed`` in its run.json (message, time, traceback tail)."""
    write_run_info(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}",
                   failed_at=datetime.now(UTC).isoformat(timespec="seconds"),
                   traceback="".join(traceback.format_exception(exc))[-4000:])
