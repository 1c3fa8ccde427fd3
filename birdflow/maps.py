"""``python -m birdflow.maps``: the command behind :mod:`birdflow.evaluation.maps`."""

import sys

from birdflow.evaluation.maps import main

if __name__ == "__main__":
    sys.exit(main())
