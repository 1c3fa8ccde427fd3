"""The time-inhomogeneous Markov chain: parameters, marginals, transitions, fitted models."""

from birdflow.model.markov import WeekIndex, init_params, marginals, transitions

__all__ = ["WeekIndex", "init_params", "marginals", "transitions"]
