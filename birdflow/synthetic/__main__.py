"""``python -m birdflow.synthetic``: the command is :mod:`birdflow.cli.synthetic`."""

from birdflow.cli.synthetic import main

if __name__ == "__main__":
    main()
