"""``python -m birdflow.bench``: see :mod:`birdflow.bench.core`."""

from birdflow.bench.core import main

if __name__ == "__main__":
    main()
