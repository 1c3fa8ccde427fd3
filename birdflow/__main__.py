"""``python -m birdflow <command>``: the dispatcher is :mod:`birdflow.cli.main`."""

import sys

from birdflow.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
