"""Hyperparameter sweeps: Hydra multiruns, their summary table and BirdFlowPipeline's model selection."""
