"""``python -m birdflow.download``: kept for the README's commands; the command is :mod:`birdflow.cli.download`."""

from birdflow.cli.download import main

if __name__ == "__main__":
    main()
