"""``python -m birdflow.sweep``: kept for the README's commands; the command is :mod:`birdflow.cli.sweep`."""

from birdflow.cli.sweep import main

if __name__ == "__main__":
    main()
