"""Small IO helpers shared by every writer: atomic replace so nothing half-written is left."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so a
    killed or failed writer never leaves a truncated output behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should be readable like any file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:  # named by the file being written, not its temporary name
        tmp_path.unlink(missing_ok=True)
        if e.filename is None or str(e.filename) == str(tmp_path):
            raise _named(e, path) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _named(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its file name; HDF5 reports the C errno only inside its text."""
    code, text = e.errno, e.strerror
    if code is None:
        found = re.search(r"errno = (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        text = os.strerror(code)
    return OSError(code, text, str(path))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


IN_MEMORY_LIMIT = 512 * 2**20  # HDF5/NetCDF files up to this size are built in memory first


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike, nbytes_hint: int = 0) -> Iterator[Path | io.BytesIO]:
    """Like :func:`atomic_path` for an HDF5 (NetCDF-4) writer; yields what to open for writing.

    The HDF5 library turns a failed write (a full disk) into a cascade of errors and may crash
    the process on exit, so a file up to :data:`IN_MEMORY_LIMIT` is built in memory and then
    written in one plain write; a larger one goes to the temporary file directly, after a
    check that the disk has ``nbytes_hint`` bytes free.
    """
    path = Path(path)
    if nbytes_hint > IN_MEMORY_LIMIT:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
        if free < 1.05 * nbytes_hint:
            raise OSError(errno.ENOSPC, f"about {nbytes_hint / 1e9:.1f} GB needed, "
                          f"{free / 1e9:.1f} GB free", str(path))
        with atomic_path(path) as tmp:
            yield tmp
        return
    buf = io.BytesIO()
    yield buf
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())
