"""The commands: ``birdflow <command>`` and ``python -m birdflow.<command>``.

Each module here is a thin layer: it turns a Hydra config into arguments for the library
(:mod:`birdflow.training`, :mod:`birdflow.evaluation`, ...) and prints what it wrote. No other
module of the package is a command; ``birdflow/<command>.py`` and the packages' ``__main__``
only delegate here so that ``python -m birdflow.train`` keeps working.
"""
