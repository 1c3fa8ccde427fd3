"""birdflow's Hydra configs, shipped in the wheel as ``birdflow.conf`` (``pkg://birdflow.conf``).

Importing it (Hydra does, to read these files) registers the structured schemas that some
command configs start from (``defaults: [<command>_schema, ...]``): the frozen dataclasses of
:mod:`birdflow.cli.settings`, the single source of those commands' defaults.
"""

import birdflow.cli.settings  # noqa: F401  (registers <command>_schema in Hydra's ConfigStore)
