"""Training: the optax loop over the objective, checkpoints, settings and run directories."""
