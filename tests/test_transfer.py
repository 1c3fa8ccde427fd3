"""``birdflow transfer`` end to end on three tiny zoo species: the table, and a stopped run
rerun with the same run dir does only the parts it lacks (a run with other settings is refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# three zoo species at 250 km (a dozen cells a week), few birds, one outer step per tune
TINY = ["transfer.species=[zoo_longhaul,zoo_shorthop,zoo_resident]", "species.res_km=250",
        "species.synthetic.n_tracks=10", "++species.synthetic.banding.n_birds=80",
        "++species.synthetic.banding.population=800", "tune.steps=1", "tune.min_intervals=5",
        "progress=false"]


def _transfer(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "birdflow.cli.transfer", f"run_dir={tmp_path / 'loo'}",
           f"data.root={tmp_path / 'data'}", *TINY, *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # three tiny species, 3 own tunes and 6 joint tunes of one step: ~1-2 min
def test_transfer_table_and_a_stopped_run_finishes_only_what_it_lacks(tmp_path):
    first = _transfer(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    table_csv = tmp_path / "loo" / "transfer.csv"
    table = pd.read_csv(table_csv)
    assert list(table["species"]) == ["zoo_longhaul", "zoo_shorthop", "zoo_resident"]
    for col in ("gain_default", "gain_own", "gain_pooled", "gain_traits", "recovered_pooled"):
        assert table[col].notna().all(), col
    assert (table["own_steps"] == 1).all() and (table["pooled_steps"] == 1).all()
    assert (tmp_path / "loo" / "transfer.png").stat().st_size > 0
    # each joint tune starts where the others' own tunes ended: the pooled one at their mean θ
    free = ["log_dist_weight", "log_ent_weight", "dist_pow"]
    own = {s: pd.read_csv(tmp_path / "loo" / f"own_{s}.csv").query("accepted == 1").iloc[-1][free]
           for s in table["species"]}
    start = pd.read_csv(tmp_path / "loo" / "pooled_without_zoo_resident.csv").iloc[0][free]
    assert np.allclose(start, (own["zoo_longhaul"] + own["zoo_shorthop"]) / 2)

    # a run stopped before the last species' trait fold: drop what that fold wrote
    table.loc[2, ["gain_traits", "theta_traits", "traits_steps", "traits_s"]] = None
    table.drop(columns=[c for c in table if c.startswith("recovered_")]).to_csv(table_csv, index=False)
    again = _transfer(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "resuming" in log and "8 of 9 parts finished" in log, log[-2000:]
    assert log.count("already in") == 8 and "traits_without_zoo_resident" in log
    redone = pd.read_csv(table_csv)
    assert redone["gain_traits"].notna().all()
    keep = ["gain_default", "gain_own", "gain_pooled"]
    pd.testing.assert_frame_equal(redone[keep], table[keep])  # the finished parts are untouched

    other = _transfer(tmp_path, "tune.steps=2")
    assert other.returncode == 2 and "other settings" in other.stderr and "tune" in other.stderr
