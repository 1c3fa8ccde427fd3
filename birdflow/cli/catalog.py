"""``birdflow catalog dir=<batch dir>``: the model catalog of a batch.

Also ``python -m birdflow.catalog``. Writes ``catalog.csv``, ``catalog.md`` and a
self-contained ``index.html`` into the batch dir (:func:`birdflow.batch.catalog.write_catalog`)
and prints the table.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from birdflow.batch.catalog import BRIEF, CATALOG, INDEX, write_catalog
from birdflow.cli.command import command
from birdflow.errors import ConfigError
from birdflow.sweeps.summary import markdown


@command("catalog", "birdflow catalog")
def main(cfg: DictConfig) -> list[dict]:
    batch_dir = Path(str(cfg.dir))
    if not batch_dir.is_dir():
        raise ConfigError(f"dir={batch_dir}: no such folder; pass the batch dir `birdflow batch` printed")
    rows = write_catalog(batch_dir)
    print(markdown(rows, list(BRIEF)), end="")
    print(f"catalog: {batch_dir / f'{CATALOG}.csv'}, {batch_dir / INDEX}")
    return rows


if __name__ == "__main__":
    main()
