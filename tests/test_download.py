"""S&T download against a real HTTP server on 127.0.0.1 that speaks the ebirdst API shape."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from birdflow.data.download import download_st_rasters
from birdflow.data.ebirdst import read_st_raster, st_raster_path, write_st_raster
from birdflow.data.preprocess import AMERICAS_LAEA, load_or_preprocess
from birdflow.errors import DownloadError

KEY = "good-key"
CODE, YEAR = "tstbrd", 2022


class StServer:
    """Serves files under ``root`` as /v1/list-obj/<year>/<code> and /v1/fetch?objKey=…"""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[dict] = []
        self.truncate_once: set[str] = set()  # object keys whose next response is cut short
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                server.requests.append({"path": url.path, "query": q, "range": self.headers.get("Range")})
                if q.get("key") != KEY:
                    return self.send_error(403, "Forbidden")
                if m := re.fullmatch(r"/v1/list-obj/(\d{4})/(\w+)", url.path):
                    keys = [p.relative_to(server.root).as_posix()
                            for p in sorted((server.root / m[1] / m[2]).rglob("*")) if p.is_file()]
                    body = json.dumps(keys).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    return self.wfile.write(body)
                if url.path == "/v1/fetch" and (server.root / q.get("objKey", "-")).is_file():
                    return self._send_file(q["objKey"])
                self.send_error(404, "Not Found")

            def _send_file(self, obj: str):
                data = (server.root / obj).read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if obj in server.truncate_once:
                    server.truncate_once.discard(obj)
                    body = body[: len(body) // 3]  # then close: fewer bytes than Content-Length
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def fetches(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/v1/fetch"]


@pytest.fixture
def st_server(tmp_path):
    remote = tmp_path / "remote"
    cube = np.random.default_rng(0).random((52, 20, 30))  # ~120 kB per file: several chunks
    for metric in ("median", "lower", "upper"):
        write_st_raster(st_raster_path(remote, CODE, YEAR, "27km", metric), cube,
                        Affine(5e4, 0, 5e6, 0, -5e4, 1e7), AMERICAS_LAEA)
    # files the downloader must leave alone
    write_st_raster(st_raster_path(remote, CODE, YEAR, "9km"), cube[:, :2, :2],
                    Affine(5e4, 0, 5e6, 0, -5e4, 1e7), AMERICAS_LAEA)
    (remote / str(YEAR) / CODE / "seasonal").mkdir()
    (remote / str(YEAR) / CODE / "seasonal" / f"{CODE}_abundance_seasonal_27km_{YEAR}.tif").write_bytes(b"x")
    server = StServer(remote)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def download(server, tmp_path, key=KEY):
    return download_st_rasters(CODE, YEAR, "27km", tmp_path / "raw", key=key, base_url=server.url,
                               progress=False)


def test_download_fetches_only_the_weekly_files_of_the_resolution(st_server, tmp_path):
    paths = download(st_server, tmp_path)
    assert sorted(paths) == ["lower", "median", "upper"]
    for metric, path in paths.items():
        assert path == st_raster_path(tmp_path / "raw", CODE, YEAR, "27km", metric)
        assert path.read_bytes() == (st_server.root / path.relative_to(tmp_path / "raw")).read_bytes()
    assert len(st_server.fetches()) == 3
    assert all("27km" in r["query"]["objKey"] for r in st_server.fetches())
    assert read_st_raster(paths["median"]).shape == (52, 20, 30)
    assert not list((tmp_path / "raw").rglob("*.part"))


def test_existing_files_are_skipped(st_server, tmp_path):
    download(st_server, tmp_path)
    n = len(st_server.fetches())
    download(st_server, tmp_path)
    assert len(st_server.fetches()) == n  # only the listing was requested again


def test_partial_file_is_resumed_with_a_range_request(st_server, tmp_path):
    dest = st_raster_path(tmp_path / "raw", CODE, YEAR, "27km")
    full = (st_server.root / dest.relative_to(tmp_path / "raw")).read_bytes()
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:1000])
    download(st_server, tmp_path)
    ranged = [r for r in st_server.fetches() if r["range"]]
    assert [r["range"] for r in ranged] == ["bytes=1000-"]
    assert dest.read_bytes() == full and not part.exists()


def test_server_ignoring_range_restarts_the_file(st_server, tmp_path):
    st_server.ignore_range = True
    dest = st_raster_path(tmp_path / "raw", CODE, YEAR, "27km")
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 100)
    download(st_server, tmp_path)
    assert dest.read_bytes() == (st_server.root / dest.relative_to(tmp_path / "raw")).read_bytes()


def test_bad_key_is_refused(st_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 403, bad or expired EBIRDST_KEY key.*science.ebird.org") as e:
        download(st_server, tmp_path, key="wrong")
    assert "wrong" not in str(e.value)  # the key is never echoed
    assert not (tmp_path / "raw").exists()


def test_no_key_says_how_to_get_one_and_where_to_put_files(st_server, tmp_path, monkeypatch):
    monkeypatch.delenv("EBIRDST_KEY", raising=False)
    with pytest.raises(DownloadError) as e:
        download(st_server, tmp_path, key=None)
    msg = str(e.value)
    assert "https://science.ebird.org/en/status-and-trends/download-data" in msg
    assert str(st_raster_path(tmp_path / "raw", CODE, YEAR, "27km")) in msg
    assert st_server.requests == []


def test_truncated_transfer_errors_then_rerun_resumes(st_server, tmp_path):
    obj = f"{YEAR}/{CODE}/weekly/{CODE}_abundance_lower_27km_{YEAR}.tif"
    st_server.truncate_once.add(obj)
    with pytest.raises(DownloadError, match=r"truncated transfer \(\d+ of \d+ bytes\); re-run"):
        download(st_server, tmp_path)
    dest = st_raster_path(tmp_path / "raw", CODE, YEAR, "27km", "lower")
    part = dest.with_name(dest.name + ".part")
    cut = part.stat().st_size
    assert not dest.exists() and cut == len((st_server.root / obj).read_bytes()) // 3
    download(st_server, tmp_path)
    assert dest.read_bytes() == (st_server.root / obj).read_bytes() and not part.exists()
    assert [r["range"] for r in st_server.fetches() if r["range"]] == [f"bytes={cut}-"]


def test_unknown_species_is_a_clear_error(st_server, tmp_path):
    with pytest.raises(DownloadError, match="no weekly 3km abundance GeoTIFF for tstbrd"):
        download_st_rasters(CODE, YEAR, "3km", tmp_path / "raw", key=KEY, base_url=st_server.url)


def test_preprocess_downloads_a_missing_species(st_server, tmp_path, monkeypatch):
    monkeypatch.setenv("EBIRDST_KEY", KEY)
    species = dict(code=CODE, version_year=YEAR, source_res="27km", raster=None, res_km=100,
                   start_week=1, end_week=52)
    ds, path = load_or_preprocess(species, {"root": str(tmp_path / "data"),
                                            "ebirdst_base_url": st_server.url})
    assert (tmp_path / "data" / "raw" / str(YEAR) / CODE / "weekly").is_dir()
    assert ds.sizes["week"] == 52 and "uci" in ds and path.exists()


def test_cli_downloads_with_the_preprocess_config(st_server, tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "birdflow.download", "species=barswa", f"species.code={CODE}",
         f"data.root={tmp_path / 'data'}", f"data.ebirdst_base_url={st_server.url}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=repo, capture_output=True, text=True, timeout=120, env={**os.environ, "EBIRDST_KEY": KEY})
    assert out.returncode == 0, out.stderr
    assert f"median: {st_raster_path(tmp_path / 'data' / 'raw', CODE, YEAR, '27km')}" in out.stdout
