"""``python -m birdflow.train``: the command is :mod:`birdflow.cli.train`."""

from birdflow.cli.train import main

if __name__ == "__main__":
    main()
