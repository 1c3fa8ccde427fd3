"""``python -m birdflow.maps``: the command is :mod:`birdflow.cli.maps`."""

from birdflow.cli.maps import main

if __name__ == "__main__":
    main()
