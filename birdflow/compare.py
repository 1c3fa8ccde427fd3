"""``python -m birdflow.compare``: kept for the README's commands; the command is :mod:`birdflow.cli.compare`."""

from birdflow.cli.compare import main

if __name__ == "__main__":
    main()
