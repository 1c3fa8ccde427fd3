"""Benchmarks: ``python -m birdflow.bench`` times the real training step (docs/benchmarks/speed.md)."""
