"""Sampled routes -> CSV -> tracks reader -> interval scores (issue 14 item 4)."""

from __future__ import annotations

import json

import pandas as pd
from test_routes import make_na_model

from birdflow.data.tracks import load_tracks, read_tracks
from birdflow.evaluation.evaluate import evaluate_model
from birdflow.evaluation.routes import sample_routes, write_routes


def test_sampled_routes_read_back_as_tracks_and_score_above_the_null(tmp_path):
    model = make_na_model()
    df = sample_routes(model, 40, start="2022-03-01", end="2022-06-28", seed=3)  # weeks 9..26
    write_routes(df, tmp_path / "routes.csv", tmp_path / "routes.geojson",
                 tmp_path / "routes_points.geojson")
    points = json.loads((tmp_path / "routes_points.geojson").read_text())["features"]
    assert len(points) == 40 * 18 and points[0]["geometry"]["type"] == "Point"
    assert points[0]["properties"]["time"] == "2022-03-01" and points[17]["properties"]["time"] == "2022-06-28"
    rows = read_tracks(tmp_path / "routes.csv")
    assert (rows["problem"] == "").all() and rows["bird_id"].nunique() == 40
    tracks = load_tracks(tmp_path / "routes.csv", model.data)
    assert len(tracks.intervals) == 40 * 17
    # every point snaps back to the cell it was sampled in
    assert (tracks.rows["cell"].to_numpy() == df["i"].to_numpy() - 1).all()
    s = evaluate_model(model, tracks, w2=False, win_prob=False)["summary"]
    assert s["n_intervals"] == 40 * 17  # nothing excluded
    # the model's own routes are far likelier under the model than under S&T alone
    assert s["mean_ll"] > s["mean_null_ll"] + 0.5, (s["mean_ll"], s["mean_null_ll"])


def test_birdflowr_routes_table_is_read_as_tracks(tmp_path):
    csv = tmp_path / "routes.csv"
    pd.DataFrame({"route_id": ["a", "a", "b"], "date": ["2022-03-01", "2022-03-08", "2022-03-01"],
                  "lon": [-90.0, -90.5, -91.0], "lat": [30.0, 30.5, 31.0],
                  "route_type": "tracking"}).to_csv(csv, index=False)
    rows = read_tracks(csv)
    assert rows["bird_id"].tolist() == ["a", "a", "b"] and (rows["problem"] == "").all()
