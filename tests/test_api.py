"""The Python front door on a saved model: bf.evaluate reuses a run's metrics, bf.plot_loss
takes a model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import independence_model

import birdflow as bf
from birdflow.model.fitted import save_model


@pytest.fixture
def saved(tiny_bfdata, tmp_path):
    model = independence_model(tiny_bfdata)
    model.loss_history = {"total": np.linspace(2.0, 1.0, 20), "obs": np.linspace(1.5, 0.5, 20)}
    save_model(model, tmp_path)
    return bf.load_model(tmp_path)


def test_evaluate_reuses_the_metrics_of_the_same_model(saved, monkeypatch):
    first = bf.evaluate(saved, w2=False)  # options given: computed, not reusable
    assert first["options"] == {"w2": False}
    full = bf.evaluate(saved)  # the default evaluation, as after training
    import birdflow.evaluation.evaluate as ev

    def boom(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(ev, "evaluate_model", boom)
    again = bf.evaluate(saved)
    assert again["summary"] == full["summary"]
    with pytest.raises(AssertionError, match="evaluated again"):
        bf.evaluate(saved, recompute=True)


def test_evaluate_again_after_the_model_changed(saved):
    full = bf.evaluate(saved)
    save_model(saved, saved.run_dir)  # a new model file (e.g. a resumed run)
    assert bf.evaluate(saved)["stamp"] != full["stamp"]


def test_plot_loss_takes_a_model(saved):
    fig = bf.plot_loss(saved)
    assert fig.axes and fig.axes[0].get_lines()
