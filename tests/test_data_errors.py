"""Bad input to preprocessing: one-line DataError naming the file and the fix, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from omegaconf import OmegaConf

from birdflow.data.ebirdst import write_st_raster
from birdflow.data.preprocess import AMERICAS_LAEA, load_or_preprocess, season_weeks
from birdflow.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
T = Affine(5e4, 0, 5e6, 0, -5e4, 1e7)


def species_cfg(raster, **kw) -> dict:
    return dict(code="tst", common_name="Test", scientific_name="T. t", version_year=2022,
                source_res="27km", raster=str(raster), res_km=100, max_params=None, gpu_ram_gb=12,
                crs=None, clip=None, trim_quantile=None, start_week=1, end_week=52, tracks=None) | kw


def good_cube() -> np.ndarray:
    return np.random.default_rng(0).random((52, 4, 6))


def expect_data_error(tmp_path, species, *fragments) -> str:
    """Run load_or_preprocess, check the message and that processed/ holds nothing."""
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        load_or_preprocess(species, {"root": str(root)})
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    processed = root / "processed"
    assert not processed.exists() or not any(processed.iterdir())
    return msg


def test_missing_raster(tmp_path):
    missing = tmp_path / "nope_2022.tif"
    expect_data_error(tmp_path, species_cfg(missing), str(missing), "fix the path")


def test_text_file_is_not_a_geotiff(tmp_path):
    bad = tmp_path / "text_2022.tif"
    bad.write_text("this is not a raster\n")
    expect_data_error(tmp_path, species_cfg(bad), str(bad), "not a readable GeoTIFF", "re-download")


def test_png_is_not_a_geotiff(tmp_path):
    png = tmp_path / "image_2022.png"
    with rasterio.open(png, "w", driver="PNG", width=4, height=4, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    expect_data_error(tmp_path, species_cfg(png), str(png), "not a GeoTIFF", "species.raster")


def test_wrong_band_count(tmp_path):
    path = write_st_raster(tmp_path / "three_2022.tif", good_cube()[:3], T, AMERICAS_LAEA)
    expect_data_error(tmp_path, species_cfg(path), str(path), "3 bands, expected 52",
                      "weekly abundance product")


def test_week_all_zero_after_masking(tmp_path):
    cube = good_cube()
    cube[6] = 0.0
    cube[7] = np.nan
    path = write_st_raster(tmp_path / "gap_2022.tif", cube, T, AMERICAS_LAEA, nodata=-3.4e38)
    expect_data_error(tmp_path, species_cfg(path), str(path), "week(s) [7, 8]", "start_week/end_week")


def test_week_emptied_by_the_clip_polygon(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    cube = np.zeros((52, 4, 6))
    cube[:, :, :3] = 1.0
    cube[10, :, :3], cube[10, :, 3:] = 0.0, 1.0  # week 11 lives only in the east half
    path = write_st_raster(tmp_path / "east_2022.tif", cube, T, AMERICAS_LAEA)
    clip = tmp_path / "west.geojson"
    gpd.GeoDataFrame(geometry=[box(4.9e6, 9.7e6, 5.15e6, 1.01e7)], crs=AMERICAS_LAEA).to_crs(4326).to_file(clip)
    expect_data_error(tmp_path, species_cfg(path, clip=str(clip), res_km=50), str(path),
                      "week(s) [11]", "larger clip region")


def test_no_crs(tmp_path):
    path = write_st_raster(tmp_path / "nocrs_2022.tif", good_cube(), T, None)
    expect_data_error(tmp_path, species_cfg(path), str(path), "has no CRS", "assign one")


def test_negative_values(tmp_path):
    cube = good_cube()
    cube[3, 1, 1] = -2.0
    path = write_st_raster(tmp_path / "neg_2022.tif", cube, T, AMERICAS_LAEA, nodata=-3.4e38)
    expect_data_error(tmp_path, species_cfg(path), str(path), "negative abundance", "band 4",
                      "set the file's nodata value")


def test_missing_clip_file(tmp_path):
    path = write_st_raster(tmp_path / "ok_2022.tif", good_cube(), T, AMERICAS_LAEA)
    clip = tmp_path / "nowhere.geojson"
    expect_data_error(tmp_path, species_cfg(path, clip=str(clip)), str(clip), "species.clip")


def test_projected_coordinates_in_a_geojson(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    path = write_st_raster(tmp_path / "ok_2022.tif", good_cube(), T, AMERICAS_LAEA)
    clip = tmp_path / "metres.geojson"  # GeoJSON drops the CRS: metres read back as "degrees"
    gpd.GeoDataFrame(geometry=[box(4.9e6, 9.7e6, 5.15e6, 1.01e7)], crs=AMERICAS_LAEA).to_file(clip)
    expect_data_error(tmp_path, species_cfg(path, clip=str(clip)), str(clip), "EPSG:4326")


def test_species_with_no_data_and_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("EBIRDST_KEY", raising=False)
    species = OmegaConf.load(REPO / "conf" / "species" / "barswa.yaml")
    expected = tmp_path / "data/raw/2022/barswa/weekly/barswa_abundance_median_27km_2022.tif"
    expect_data_error(tmp_path, species, str(expected), "EBIRDST_KEY",
                      "https://science.ebird.org/en/status-and-trends/download-data")


def test_cli_fails_fast_with_one_line(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "EBIRDST_KEY"}
    out = subprocess.run(
        [sys.executable, "-m", "birdflow.preprocess", "species=barswa",
         f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    last = lines[0]
    assert last.startswith("birdflow preprocess: error: ") and "barswa_abundance_median_27km_2022.tif" in last
    assert "EBIRDST_KEY" in last and "Traceback" not in out.stderr


def test_bad_numbers_are_config_errors(tmp_path):
    path = write_st_raster(tmp_path / "ok_2022.tif", good_cube(), T, AMERICAS_LAEA)
    for key, value in (("res_km", 0), ("trim_quantile", 1.5), ("crs", "+proj=nonsense")):
        with pytest.raises(ConfigError, match=f"species.{key}="):
            load_or_preprocess(species_cfg(path, **{key: value}), {"root": str(tmp_path)})
    assert not (tmp_path / "processed").exists()


def test_bad_season_is_a_config_error():
    with pytest.raises(ConfigError, match="start_week=0"):
        season_weeks(0, 10)
    with pytest.raises(ConfigError, match="rotated full year"):
        season_weeks(10, 9)
