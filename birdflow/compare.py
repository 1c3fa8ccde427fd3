"""``python -m birdflow.compare``: the command is :mod:`birdflow.cli.compare`."""

from birdflow.cli.compare import main

if __name__ == "__main__":
    main()
