"""``python -m birdflow.preprocess``: the command is :mod:`birdflow.cli.preprocess`."""

from birdflow.cli.preprocess import main

if __name__ == "__main__":
    main()
