"""BirdFlowR HDF5 interop end to end: a model trained here round-trips; the real sstspa model is usable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from birdflow.api import after_training
from birdflow.evaluation.evaluate import evaluate_model
from birdflow.evaluation.maps import plot_distributions, plot_routes
from birdflow.evaluation.routes import sample_routes
from birdflow.export import import_birdflowr
from birdflow.training.loop import train


@pytest.mark.slow
def test_trained_synthetic_model_exports_and_reimports_identically(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}", "species.synthetic.size=0.5",
            "species.synthetic.n_tracks=30", "optim.steps=20", "progress=false", "tensorboard=false",
            "maps=false", "evaluate=false", "export.hdf5=true"])
    res = train(cfg, after=after_training)
    files = list((tmp_path / "run").glob("synthetic_2022_100km_obs*.hdf5"))
    assert len(files) == 1, "training wrote the BirdFlowR file named by the pipeline convention"
    back = import_birdflowr(files[0])
    np.testing.assert_array_equal(back.marginals, res.model.marginals)
    np.testing.assert_array_equal(back.index.slot_cell, res.model.index.slot_cell)
    np.testing.assert_array_equal(back.data["distr"].values, res.model.data["distr"].values)
    tracks = tmp_path / "data" / "synthetic"
    csv = next(tracks.glob("*/tracks.csv"))
    a = evaluate_model(res.model, csv, w2=False)["summary"]
    b = evaluate_model(back, csv, w2=False)["summary"]
    assert a == b
    assert back.hyperparameters["location_loss"] == "l2"


@pytest.mark.shared
def test_imported_sstspa_model_metrics_routes_and_map(sstspa_hdf5, tmp_path):
    model = import_birdflowr(sstspa_hdf5)
    result = evaluate_model(model, w2=False)
    s = result["summary"]
    assert s["n_cells"] == 68 and s["n_weeks"] == 52
    assert 0.9 < s["mean_distr_cor"] <= 1 and 0.9 < s["md_traverse_cor"] <= 1
    routes = sample_routes(model, 20, start_week=10, n_weeks=20, seed=1)
    dm = model.data["dynamic_mask"].values
    pos = routes["week"].values - 1
    assert dm[pos, routes["i"].values - 1].all(), "routes stay inside the weekly dynamic masks"
    p1, p2 = tmp_path / "sstspa_distr.png", tmp_path / "sstspa_routes.png"
    plot_distributions(model, [10, 20, 30], p1)
    plot_routes(model, routes, p2)
    assert p1.stat().st_size > 10_000 and p2.stat().st_size > 10_000
