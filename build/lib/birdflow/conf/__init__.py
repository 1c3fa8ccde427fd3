"""birdflow's Hydra configs, shipped in the wheel as ``birdflow.conf`` (``pkg://birdflow.conf``)."""
