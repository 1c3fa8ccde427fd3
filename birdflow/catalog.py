"""``python -m birdflow.catalog``: the command is :mod:`birdflow.cli.catalog`."""

from birdflow.cli.catalog import main

if __name__ == "__main__":
    main()
