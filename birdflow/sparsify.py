"""``python -m birdflow.sparsify``: kept for the README's commands; the command is :mod:`birdflow.cli.sparsify`."""

from birdflow.cli.sparsify import main

if __name__ == "__main__":
    main()
