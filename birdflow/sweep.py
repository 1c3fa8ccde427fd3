"""``python -m birdflow.sweep``: the command is :mod:`birdflow.cli.sweep`."""

from birdflow.cli.sweep import main

if __name__ == "__main__":
    main()
