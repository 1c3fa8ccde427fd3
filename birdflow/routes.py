"""``python -m birdflow.routes``: the command behind :mod:`birdflow.evaluation.routes`."""

import sys

from birdflow.evaluation.routes import main

if __name__ == "__main__":
    sys.exit(main())
