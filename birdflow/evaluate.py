"""``python -m birdflow.evaluate``: the command is :mod:`birdflow.cli.evaluate`."""

from birdflow.cli.evaluate import main

if __name__ == "__main__":
    main()
