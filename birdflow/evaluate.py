"""``python -m birdflow.evaluate``: the command behind :mod:`birdflow.evaluation.evaluate`."""

import sys

from birdflow.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
