"""birdflow: learn bird migration from eBird Status & Trends weekly abundance maps.

    import birdflow as bf
    m = bf.fit(species="synthetic", loss="w2")    # or bf.load_model("outputs/...")
    bf.evaluate(m)

Data flows one way: ``birdflow.data`` (S&T rasters -> BirdFlowData) -> ``birdflow.model``
(Markov chain) -> ``birdflow.synthetic`` -> ``birdflow.losses`` -> ``birdflow.training`` ->
``birdflow.evaluation`` / ``birdflow.export`` / ``birdflow.sweeps`` -> commands and this API.
The names below are imported on first use, so ``import birdflow`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "fit": "birdflow.api", "load_model": "birdflow.api", "preprocess": "birdflow.api",
    "evaluate": "birdflow.api", "config": "birdflow.api", "validate": "birdflow.api",
    "BirdFlowModel": "birdflow.model.fitted",
    "plot_distributions": "birdflow.evaluation.maps", "plot_routes": "birdflow.evaluation.maps",
    "plot_loss": "birdflow.evaluation.maps", "plot_fit_per_week": "birdflow.evaluation.maps",
    "animate_year": "birdflow.evaluation.maps", "save_figure": "birdflow.evaluation.maps",
    "BirdFlowError": "birdflow.errors", "ConfigError": "birdflow.errors",
    "DataError": "birdflow.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'birdflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
