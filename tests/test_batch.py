"""``birdflow batch`` and ``birdflow catalog``: a batch of tiny zoo species with one broken
species config, the rerun that retries only it, the catalog's files and links, and the
catalog's index.html rendered and sorted in headless Chromium (skipped where none is
installed: ``apt-get install chromium``)."""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from birdflow.batch.catalog import FILES
from birdflow.batch.html import render_index
from birdflow.batch.jobs import parse_species, rejected_species
from birdflow.errors import ConfigError

# two zoo species at 200 km (14-27 cells a week), 10 steps, few birds: a job takes a few seconds
TINY = ["species.res_km=200", "optim.steps=10", "checkpoint_every=10", "batch.n_routes=1",
        "species.synthetic.n_tracks=10", "species.synthetic.banding.n_birds=40",
        "species.synthetic.banding.population=400"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_parse_species_takes_lists_and_names_the_problem():
    assert parse_species("[zoo_loop, zoo_nomad]") == ["zoo_loop", "zoo_nomad"]
    assert parse_species("zoo_loop") == ["zoo_loop"]
    with pytest.raises(ConfigError, match="species: empty"):
        parse_species("[]")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_species("[a,a]")


def test_a_species_without_a_config_is_rejected_in_one_line():
    why = rejected_species(["zoo_loop", "zoo_dodo"], [])
    assert list(why) == ["zoo_dodo"]
    assert why["zoo_dodo"].startswith("species=zoo_dodo: no such species config")


def _rows():
    base = {f: "" for f in FILES}
    return [{**base, "species": "b", "status": "finished", "gain_over_null": 0.5, "cells": 9},
            {**base, "species": "a", "status": "finished", "gain_over_null": 1.25, "cells": 30},
            {**base, "species": "c", "status": "failed", "gain_over_null": None, "cells": None,
             "error": "DataError: x.tif: species.raster does not exist"}]


def _order(dom: str) -> list[str]:
    body = dom[dom.index("<tbody>"):]
    return re.findall(r"<tr[^>]*><td>(?:<img alt=\"([^\"]+)\")?[^<]*</td><td>([^<]*)</td>", body)


def _render(path: Path, sort: str) -> str:
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                        f"{path.resolve().as_uri()}#sort={sort}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "<tbody>" in p.stdout, p.stderr[-2000:]
    return p.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_index_renders_and_sorts_in_headless_chromium(tmp_path):
    path = tmp_path / "index.html"
    path.write_text(render_index(_rows(), tmp_path))
    species = [s for _, s in _order(_render(path, "gain_over_null"))]
    assert species == ["b", "a", "c"]  # ascending, the failed species' empty cell last
    dom = _render(path, "-gain_over_null")
    assert [s for _, s in _order(dom)] == ["a", "b", "c"]
    assert 'class="desc">gain_over_null' in dom
    assert [s for _, s in _order(_render(path, "species"))] == ["a", "b", "c"]


def _batch(tmp_path: Path, conf: Path, species: str, *extra: str):
    cmd = [sys.executable, "-m", "birdflow.batch", f"species={species}", f"dir={tmp_path / 'batch'}",
           f"data.root={tmp_path / 'data'}", f"hydra.searchpath=[{conf.as_uri()}]", *TINY, *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _catalog(batch: Path) -> dict[str, dict]:
    with open(batch / "catalog.csv", newline="") as f:
        return {r["species"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_batch_reports_a_broken_species_and_a_rerun_retries_only_it(tmp_path):
    conf = tmp_path / "conf"
    (conf / "species").mkdir(parents=True)
    good = (REPO / "conf" / "species" / "zoo_resident.yaml").read_text()
    broken = good.replace("raster: null", "raster: missing/zoo_broken.tif  # deliberately broken")
    (conf / "species" / "zoo_broken.yaml").write_text(broken)
    species = "[zoo_shorthop,zoo_resident,zoo_broken]"
    p = _batch(tmp_path, conf, species)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    batch = tmp_path / "batch"
    rows = _catalog(batch)
    assert {s: r["status"] for s, r in rows.items()} == {
        "zoo_broken": "failed", "zoo_resident": "finished", "zoo_shorthop": "finished"}
    assert "species.raster does not exist" in rows["zoo_broken"]["error"]
    assert "\n" not in rows["zoo_broken"]["error"]
    for name in ("zoo_resident", "zoo_shorthop"):
        r = rows[name]
        assert float(r["gain_over_null"]) == pytest.approx(float(r["mean_ll"]) - float(r["mean_null_ll"]), abs=1e-5)
        assert r["resolution_km"] == "200" and int(r["cells"]) > 0 and r["body_mass_g"]
        for key in FILES:  # every link of the catalog resolves
            assert r[key] and (batch / r[key]).is_file(), (name, key, r[key])
    html = (batch / "index.html").read_text()
    for link in re.findall(r'href="([^"]+)"', html):
        assert (batch / link).is_file(), link
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 2 and all(base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n" for u in uris)
    if CHROMIUM is not None:
        assert [s for _, s in _order(_render(batch / "index.html", "-cells"))][-1] == "zoo_broken"

    # the fixed config: the rerun trains only the broken species; the others are untouched
    (conf / "species" / "zoo_broken.yaml").write_text(good)
    before = {n: (batch / f"{n}_l2" / "model.nc").stat().st_mtime_ns for n in ("zoo_resident", "zoo_shorthop")}
    p = _batch(tmp_path, conf, species)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert {s: r["status"] for s, r in _catalog(batch).items()} == dict.fromkeys(
        ("zoo_broken", "zoo_resident", "zoo_shorthop"), "finished")
    assert before == {n: (batch / f"{n}_l2" / "model.nc").stat().st_mtime_ns for n in before}

    # the catalog command rebuilds the same table
    q = subprocess.run([sys.executable, "-m", "birdflow.catalog", f"dir={batch}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0 and "zoo_broken | finished" in q.stdout, q.stderr[-2000:]
    q = subprocess.run([sys.executable, "-m", "birdflow.catalog", f"dir={tmp_path / 'nope'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert q.returncode == 2 and "no such folder" in q.stderr


def test_batch_without_species_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    from conftest import run_command

    from birdflow.cli.batch import main

    monkeypatch.chdir(tmp_path)
    assert run_command(main, ["optim.steps=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("birdflow batch: error: species: missing; pass species=[a,b,...] "
                   "(names of conf/species/*.yaml)")
    assert run_command(main, ["species=[zoo_loop]", "-m"]) == 2
    assert not list(tmp_path.iterdir())


def test_a_rejected_species_is_a_failed_catalog_row_and_the_page_is_written(tmp_path):
    from birdflow.batch.catalog import write_batch_record, write_catalog

    write_batch_record(tmp_path, ["zoo_dodo", "zoo_loop"], {"zoo_dodo": "species=zoo_dodo: no such species config"})
    rows = {r["species"]: r for r in write_catalog(tmp_path)}
    assert rows["zoo_dodo"]["status"] == "failed" and rows["zoo_dodo"]["error"].startswith("species=zoo_dodo")
    assert rows["zoo_loop"]["status"] == "missing"  # asked for, but no job left a run dir
    assert (tmp_path / "catalog.csv").is_file() and "zoo_dodo" in (tmp_path / "index.html").read_text()


def test_batch_config_runs_on_the_sweep_launchers():
    from birdflow.app import compose

    cfg = compose("batch", ["species=zoo_loop", "dir=/tmp/b", "hydra/launcher=slurm"], hydra_node=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.sweep.dir == "/tmp/b" and cfg.batch.w2 is False and cfg.progress is False
    from omegaconf import OmegaConf

    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert subdir == "${hydra:runtime.choices.species}_${hydra:runtime.choices.loss}"
