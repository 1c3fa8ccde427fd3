"""``python -m birdflow.batch``: the command is :mod:`birdflow.cli.batch`."""

from birdflow.cli.batch import main

if __name__ == "__main__":
    raise SystemExit(main())
