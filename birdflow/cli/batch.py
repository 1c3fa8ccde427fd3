"""``birdflow batch species=[a,b,...] [loss=l2|w2] [dir=<batch dir>] [key=value ...]``.

Also ``python -m birdflow.batch``. One Hydra multirun job per species (``conf/batch.yaml``:
the training config plus the ``batch`` node; any launcher, ``hydra/launcher=local`` or
``slurm``), each :func:`birdflow.batch.jobs.run_species`; a species whose config does not
compose is rejected up front. At the end (whatever failed) the catalog is written
(:func:`birdflow.batch.catalog.write_catalog`) and printed with the wall time. A rerun with
the same ``dir=`` skips finished species. Exit status: 0 when every species finished, 1 when
some failed (each with its one-line reason in the catalog), 2 for a bad command line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from birdflow.app import compose, fail
from birdflow.batch.catalog import BRIEF, CATALOG, INDEX, write_batch_record, write_catalog
from birdflow.batch.jobs import (
    default_dir,
    extra_overrides,
    is_rerun,
    multirun_overrides,
    parse_species,
    rejected_species,
    run_species,
)
from birdflow.cli.command import command
from birdflow.errors import ConfigError
from birdflow.sweeps.summary import markdown

PROG = "birdflow batch"


@command("batch", PROG)
def _job(cfg: DictConfig):
    return run_species(cfg)


def _value(args: Sequence[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key]
    return found[-1] if found else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch, write and print the catalog; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "--cfg") or a.startswith("--") for a in args):
        return _job(args) or 0
    if any(a == "-m" or a == "--multirun" for a in args):
        fail(PROG, "-m: a batch is already a multirun (one job per species); leave -m out")
    species_arg = _value(args, "species")
    extra = extra_overrides(args, {"species", "dir", "resume"})
    try:
        species = parse_species(species_arg) if species_arg is not None else []
        # the options shared by every species: an unknown key or a word for a number stops here
        compose("batch", [*([f"species={species[0]}"] if species else []), *extra, "dir=."])
    except ConfigError as e:
        fail(PROG, str(e))
    if not species:
        fail(PROG, "species: missing; pass species=[a,b,...] (names of conf/species/*.yaml)")
    batch_dir = Path(_value(args, "dir") or default_dir())
    rejected = rejected_species(species, extra)
    runnable = [s for s in species if s not in rejected]
    rerun = is_rerun(batch_dir)
    batch_dir.mkdir(parents=True, exist_ok=True)
    write_batch_record(batch_dir, species, rejected)
    for name, why in rejected.items():
        print(f"{PROG}: {name}: rejected: {why}", file=sys.stderr)
    t0 = time.perf_counter()
    if runnable:
        try:
            _job(multirun_overrides(runnable, batch_dir, rerun, extra))
        except SystemExit:  # Hydra exits after the jobs when one failed: the catalog says which
            pass
        except Exception as e:  # noqa: BLE001 - HYDRA_FULL_ERROR=1 re-raises a job's error
            print(f"{PROG}: a job failed: {' '.join(str(e).split())[:200]}", file=sys.stderr)
    wall = time.perf_counter() - t0
    rows = write_catalog(batch_dir)
    if runnable and all(r["status"] == "missing" for r in rows if r["species"] in runnable):
        fail(PROG, f"no species job started (Hydra's error above); fix the overrides and rerun "
                   f"with dir={batch_dir}")
    print(markdown(rows, list(BRIEF)), end="")
    n_ok = sum(r["status"] == "finished" for r in rows)
    print(f"batch: {n_ok} of {len(rows)} models finished in {wall:.1f} s wall time; "
          f"catalog: {batch_dir / f'{CATALOG}.csv'}, {batch_dir / INDEX}")
    return 0 if n_ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
