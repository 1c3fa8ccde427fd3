"""``python -m birdflow.tune``: the command is :mod:`birdflow.cli.tune`."""

from birdflow.cli.tune import main

if __name__ == "__main__":
    main()
