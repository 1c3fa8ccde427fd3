"""``python -m birdflow.sparsify``: the command is :mod:`birdflow.cli.sparsify`."""

from birdflow.cli.sparsify import main

if __name__ == "__main__":
    main()
