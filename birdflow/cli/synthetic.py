"""``python -m birdflow.synthetic [species.synthetic.size=2] [data.root=data]``.

Generates (or finds) the synthetic species' files under ``<data.root>/synthetic/<hash>/`` and
prints their paths and sizes (options: ``synthetic:`` in ``conf/species/synthetic.yaml``);
``species=synthetic_banding`` also simulates its banding birds and prints their summary.
"""

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.synthetic.species import describe


@command("synthetic", "birdflow synthetic")
def main(cfg: DictConfig):
    return describe(cfg.species, cfg.data)


if __name__ == "__main__":
    main()
