"""``python -m birdflow.tune``: kept for the README's commands; the command is :mod:`birdflow.cli.tune`."""

from birdflow.cli.tune import main

if __name__ == "__main__":
    main()
