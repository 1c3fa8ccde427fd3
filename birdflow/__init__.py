"""birdflow: learn bird migration from eBird Status & Trends weekly abundance maps.

Data flows one way: ``birdflow.data`` (S&T rasters -> BirdFlowData) -> ``birdflow.model``
(Markov chain) -> ``birdflow.losses`` -> ``birdflow.training.loop`` -> evaluate / routes / maps / export.
"""

__version__ = "0.1.0"
