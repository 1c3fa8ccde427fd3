"""``python -m birdflow.download``: the command is :mod:`birdflow.cli.download`."""

from birdflow.cli.download import main

if __name__ == "__main__":
    main()
