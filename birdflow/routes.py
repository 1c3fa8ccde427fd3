"""``python -m birdflow.routes``: the command is :mod:`birdflow.cli.routes`."""

from birdflow.cli.routes import main

if __name__ == "__main__":
    main()
