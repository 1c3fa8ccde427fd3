"""``python -m birdflow.train``: kept for the README's commands; the command is :mod:`birdflow.cli.train`."""

from birdflow.cli.train import main

if __name__ == "__main__":
    main()
