"""The run dir lock: one process trains into a run dir at a time.

An advisory ``flock`` on ``<run>/.lock``, held for the whole training; the kernel drops it when
the process ends, however it ends (a killed run leaves no stale lock). The file names the
holder (pid, host, since) for the message a second process gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from birdflow.errors import BirdFlowError
from birdflow.runs.layout import LOCK


class RunDirLocked(BirdFlowError):
    """Another process holds the run dir's lock."""


def check_unlocked(run_dir: str | os.PathLike, purpose: str = "training") -> None:
    """Fail early (before any work) when another process holds ``run_dir``; creates nothing.

    Raises:
        RunDirLocked: another process holds it.
    """
    if (Path(run_dir) / LOCK).exists():
        with locked(run_dir, purpose, mark=False):
            pass


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike, purpose: str = "training",
           mark: bool = True) -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` meanwhile (the run dir must exist); ``mark`` names the holder
    in the file.

    Raises:
        RunDirLocked: another process holds it.
    """
    path = Path(run_dir) / LOCK
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunDirLocked(f"{run_dir}: in use by {holder}; wait until it ends, or train into "
                           "another run_dir=") from None
    try:
        if mark:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{purpose} pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.now(UTC).isoformat(timespec='seconds')}\n")
            fh.flush()
        yield path
    finally:
        if mark:
            fh.seek(0)
            fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
