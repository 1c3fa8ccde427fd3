"""``birdflow bench``: the benchmarks' command line (:mod:`birdflow.bench.core`)."""

from birdflow.bench.core import main

if __name__ == "__main__":
    main()
