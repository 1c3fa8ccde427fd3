"""Many species at once: a batch of fits and the model catalog built from it.

``birdflow batch species=[a,b,...]`` runs one job per species through Hydra's launchers, as a
sweep does (:mod:`birdflow.sweeps`): each job preprocesses, trains, evaluates, validates and
exports its species into ``<batch dir>/<species>_<loss>/`` (:mod:`birdflow.batch.jobs`). A
failed species is recorded in its run dir and the others go on; a rerun into the same batch
dir skips the finished ones. ``birdflow catalog dir=<batch dir>`` (also written at the end of
a batch) collects one row per model into ``catalog.csv``/``catalog.md`` and a self-contained
``index.html`` (:mod:`birdflow.batch.catalog`, :mod:`birdflow.batch.html`).
"""
