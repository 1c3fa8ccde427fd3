"""Download eBird Status & Trends weekly abundance GeoTIFFs with an access key (stdlib urllib).

API (the one the ebirdst R package uses)::

    GET <base>/v1/list-obj/<version_year>/<code>?key=KEY   -> JSON list of object keys
    GET <base>/v1/fetch?objKey=<object key>&key=KEY         -> the object's bytes

Only the weekly abundance files of one resolution (median, lower, upper) are fetched, into the
ebirdst layout under ``<data_root>/raw/``. Transfers go to ``<name>.part`` and are resumed with a
``Range`` request on the next run; the file is renamed into place once its size is verified.

CLI::

    python -m birdflow.download species=barswa     # EBIRDST_KEY must be set
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from birdflow.data.ebirdst import METRICS, normalize_source_res, st_raster_path
from birdflow.errors import ConfigError, DownloadError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://st-download.ebird.org"
KEY_ENV = "EBIRDST_KEY"
KEY_HELP = ("request an eBird Status & Trends access key at "
            "https://science.ebird.org/en/status-and-trends/download-data and set it with "
            f"`export {KEY_ENV}=<key>`")
CHUNK = 1 << 16
TIMEOUT_S = 60


def manual_placement(raw_root: str | os.PathLike, code: str, version_year: int, res: str) -> str:
    """The sentence telling a user where to put the S&T file by hand."""
    path = st_raster_path(raw_root, code, version_year, res)
    return (f"or place the file by hand at {path} (lower/upper bounds beside it), "
            "or set species.raster to a 52-band GeoTIFF")


def _open(url: str, what: str, headers: Mapping[str, str] | None = None):
    """urlopen with our errors; the key is never echoed back in messages."""
    shown = re.sub(r"key=[^&]*", "key=***", url)
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})),
                                      timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise DownloadError(f"{shown}: HTTP {e.code}, bad or expired {KEY_ENV} key; {KEY_HELP}") from e
        raise DownloadError(f"{shown}: HTTP {e.code} {e.reason} while fetching {what}; check "
                            "species.code/version_year/source_res and data.ebirdst_base_url") from e
    except (urllib.error.URLError, OSError, HTTPException) as e:
        raise DownloadError(f"{shown}: cannot reach the S&T server ({e}) while fetching {what}; "
                            "check the network and data.ebirdst_base_url, then re-run") from e


def list_objects(base_url: str, code: str, version_year: int, key: str) -> list[str]:
    """Object keys the server holds for one species and version year."""
    url = f"{base_url.rstrip('/')}/v1/list-obj/{int(version_year)}/{urllib.parse.quote(code)}?" \
          + urllib.parse.urlencode({"key": key})
    with _open(url, f"the file list of {code} {version_year}") as resp:
        try:
            keys = json.loads(resp.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise DownloadError(f"{base_url}: file list of {code} {version_year} is not JSON ({e}); "
                                "check data.ebirdst_base_url") from e
    if not isinstance(keys, list):
        raise DownloadError(f"{base_url}: file list of {code} {version_year} is not a JSON list; "
                            "check data.ebirdst_base_url")
    return [str(k) for k in keys]


def _content_total(resp, start: int, dest: Path) -> int | None:
    """Total size from Content-Range (206) or Content-Length (200)."""
    if resp.status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != start:
            raise DownloadError(f"{dest}: server answered a resume request with a bad Content-Range "
                                f"({resp.headers.get('Content-Range')!r}); delete {dest.name}.part and re-run")
        return None if m.group(3) == "*" else int(m.group(3))
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


def fetch_object(base_url: str, obj_key: str, key: str, dest: Path, progress: bool = True) -> Path:
    """Download one object to ``dest`` via ``dest.part``, resuming a previous partial transfer."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    url = f"{base_url.rstrip('/')}/v1/fetch?" + urllib.parse.urlencode({"objKey": obj_key, "key": key})
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        resp = _open(url, obj_key, headers)
    except DownloadError as e:
        if start and isinstance(e.__cause__, urllib.error.HTTPError) and e.__cause__.code == 416:
            part.unlink()  # the partial file is not a prefix the server recognises: start over
            return fetch_object(base_url, obj_key, key, dest, progress)
        raise
    with resp:
        if resp.status != 206:
            start = 0  # the server ignored the Range header: restart from scratch
        total = _content_total(resp, start, dest)
        done = start
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, file=sys.stderr,
                desc=dest.name, disable=not progress, leave=False) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            except (OSError, HTTPException) as e:
                raise DownloadError(f"{dest}: transfer interrupted after {done} bytes ({e}); re-run "
                                    f"the download to resume from {part.name}") from e
    if total is not None and done != total:
        raise DownloadError(f"{dest}: truncated transfer ({done} of {total} bytes); re-run the "
                            f"download to resume from {part.name}")
    os.replace(part, dest)
    return dest


def download_st_rasters(code: str, version_year: int, res: str | int, raw_root: str | os.PathLike,
                        *, key: str | None = None, base_url: str = DEFAULT_BASE_URL,
                        progress: bool = True) -> dict[str, Path]:
    """Fetch the weekly abundance GeoTIFFs (median, lower, upper) of one resolution.

    Args:
        code: eBird species code, e.g. 'barswa'.
        version_year: S&T version year, e.g. 2022.
        res: '3km' | '9km' | '27km'.
        raw_root: folder holding the ebirdst layout (``<data_root>/raw``).
        key: access key; None = environment variable ``EBIRDST_KEY``.
        base_url: S&T download server.
        progress: show a tqdm bar on stderr.

    Returns:
        metric -> local path, for the metrics the server has (median always).

    Raises:
        DownloadError: no key, bad key, unknown species/resolution, network or truncated transfer.
    """
    res = normalize_source_res(res)
    key = key or os.environ.get(KEY_ENV)
    if not key:
        raise DownloadError(f"{code} {version_year}: no S&T access key ({KEY_ENV} is not set); "
                            f"{KEY_HELP}; {manual_placement(raw_root, code, version_year, res)}")
    wanted = {f"{code}_abundance_{m}_{res}_{int(version_year)}.tif": m for m in METRICS}
    found = {}
    for obj in list_objects(base_url, code, version_year, key):
        parts = obj.split("/")
        if len(parts) >= 2 and parts[-2] == "weekly" and parts[-1] in wanted:
            found[wanted[parts[-1]]] = obj
    if "median" not in found:
        raise DownloadError(f"{base_url}: no weekly {res} abundance GeoTIFF for {code} in version "
                            f"year {version_year}; check species.code, version_year and source_res")
    paths = {}
    for metric, obj in sorted(found.items()):
        dest = st_raster_path(raw_root, code, version_year, res, metric)
        if dest.exists():
            log.info("%s already present, skipping", dest)
        else:
            log.info("downloading %s -> %s", obj, dest)
            fetch_object(base_url, obj, key, dest, progress)
        paths[metric] = dest
    return paths


def download_species(species: Mapping, data: Mapping) -> dict[str, Path]:
    """Download the files of a species config (conf/species/*.yaml) into ``data.root/raw``."""
    if species.get("code") == "synthetic":
        raise ConfigError("species=synthetic is generated locally and needs no download; "
                          "pick a real species (e.g. species=barswa)")
    return download_st_rasters(
        str(species["code"]), int(species["version_year"]), species.get("source_res") or "27km",
        Path(data.get("root") or "data") / "raw", base_url=data.get("ebirdst_base_url") or DEFAULT_BASE_URL)
