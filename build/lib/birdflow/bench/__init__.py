"""Benchmarks: ``python -m birdflow.bench`` times the real training step (see the README)."""
