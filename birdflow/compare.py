"""``python -m birdflow.compare``: the command behind :mod:`birdflow.evaluation.compare`."""

import sys

from birdflow.evaluation.compare import main

if __name__ == "__main__":
    sys.exit(main())
