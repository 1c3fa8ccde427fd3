"""``python -m birdflow.preprocess``: kept for the README's commands; the command is :mod:`birdflow.cli.preprocess`."""

from birdflow.cli.preprocess import main

if __name__ == "__main__":
    main()
