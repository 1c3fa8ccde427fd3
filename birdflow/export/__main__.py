"""``python -m birdflow.export``: the command is :mod:`birdflow.cli.export`."""

from birdflow.cli.export import main

if __name__ == "__main__":
    main()
