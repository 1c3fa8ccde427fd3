"""``python -m birdflow.validate``: the command is :mod:`birdflow.cli.validate`."""

from birdflow.cli.validate import main

if __name__ == "__main__":
    main()
