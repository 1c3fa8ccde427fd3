"""``python -m birdflow.sweep summarize <dir>``: the command behind :mod:`birdflow.sweeps.sweep`."""

import sys

from birdflow.sweeps.sweep import main

if __name__ == "__main__":
    sys.exit(main())
