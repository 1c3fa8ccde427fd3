"""``python -m birdflow.synthetic``: generate (or find) the synthetic species' files."""

from birdflow.synthetic.species import main

if __name__ == "__main__":
    main()
