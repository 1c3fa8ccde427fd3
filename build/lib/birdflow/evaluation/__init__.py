"""Evaluation of fitted models: metrics, track log-likelihood, routes, maps, L2-vs-W2 comparison."""
