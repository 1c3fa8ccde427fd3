"""One species of a batch: a training job whose run also evaluates, validates and exports.

:func:`run_species` is the task of every batch job (``conf/batch.yaml`` = ``conf/train.yaml``
plus the ``batch`` node): :func:`birdflow.training.loop.train` with :func:`finish_species` as
its ``after`` step, so ``run.json`` says ``finished`` only once every file below exists. A job
that fails is recorded as failed (:func:`birdflow.sweeps.sweep.job_failure`); with
``resume=true`` (a rerun) a finished species returns at once and a failed one starts again.

What a finished species' run dir holds besides the run itself (paths relative to it):
``metrics.json`` (evaluation; W2 only with ``batch.w2=true``), the gain over the S&T null in
``run.json``, the BirdFlowR HDF5 export (``*.hdf5``), ``geotiff/`` (model and S&T weekly
distributions), ``validation/report.html`` and ``thumbnail.png``.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path

from omegaconf import DictConfig

from birdflow.errors import ConfigError
from birdflow.training.loop import RunResult, train

GEOTIFF_DIR = "geotiff"
THUMBNAIL = "thumbnail.png"
REPORT = "validation/report.html"


def finish_species(cfg: DictConfig, run_dir: Path, model, history: dict) -> None:
    """Evaluate, state the gain over the null, validate and export a trained species."""
    from birdflow.batch.thumbnail import write_thumbnail
    from birdflow.evaluation.evaluate import evaluate_run
    from birdflow.evaluation.gain import gain_over_null, report_gain
    from birdflow.evaluation.validation import validate_run
    from birdflow.export.gis import export_geotiffs
    from birdflow.export.hdf5_write import export_birdflowr

    node = cfg.get("batch") or {}
    summary = evaluate_run(run_dir, model=model, w2=bool(node.get("w2", False)))["summary"]
    report_gain(run_dir, gain_over_null(run_dir, model, summary))
    export_birdflowr(model, run_dir=run_dir)
    export_geotiffs(model, run_dir / GEOTIFF_DIR)
    validate_run(run_dir, model=model, n_routes=int(node.get("n_routes", 10)))
    write_thumbnail(model, run_dir / THUMBNAIL)


def run_species(cfg: DictConfig) -> RunResult | None:
    """Train one species of the batch (the job's task).

    A species that fails is recorded as failed in its run dir (the catalog's one-line reason)
    and printed as one line; the job then ends normally, so the launcher goes on without a
    traceback and the batch's exit status comes from the catalog. An interruption is raised.
    """
    import sys

    from birdflow.sweeps.sweep import check_fresh_run_dir, job_failure

    try:
        check_fresh_run_dir(cfg)
        return train(cfg, after=finish_species)
    except Exception as e:  # noqa: BLE001 - every failure is the species', recorded below
        job_failure(cfg, e)
        line = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        print(f"birdflow batch: {_species_name(cfg)}: failed: {line}", file=sys.stderr)
        return None
    except BaseException as e:
        replacement = job_failure(cfg, e)
        if replacement is e:
            raise
        raise replacement from e


def _species_name(cfg: DictConfig) -> str:
    """The job's species as the batch named it (its config file), else its code."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get("species", cfg.species.code))
    return str(cfg.species.code)


def parse_species(value: str) -> list[str]:
    """``[a,b]``, ``a,b`` or ``a`` -> species config names; ConfigError for an empty list."""
    names = [s.strip().strip("'\"") for s in value.strip().strip("[]").split(",")]
    names = [s for s in names if s]
    if not names:
        raise ConfigError("species: empty; pass species=[a,b,...] (names of conf/species/*.yaml)")
    if len(set(names)) != len(names):
        raise ConfigError(f"species={value}: a species is listed twice; list each once")
    return names


def default_dir() -> Path:
    """``outputs/batch/<timestamp>`` (microseconds: two batches never share a folder)."""
    return Path("outputs") / "batch" / time.strftime("%Y-%m-%d_%H-%M-%S") \
        / f"{time.time_ns() // 1000 % 1_000_000:06d}"


def rejected_species(species: Sequence[str], overrides: Sequence[str]) -> dict[str, str]:
    """Species whose config does not compose (missing file, bad YAML, unknown key): name -> why.

    They are left out of the multirun (Hydra would stop every job at the first one) and shown
    as failed in the catalog; a rerun tries them again.
    """
    from birdflow.app import compose

    keep = [o for o in overrides if o.startswith(("hydra.searchpath", "species."))]
    out = {}
    for name in species:
        try:
            compose("batch", [f"species={name}", *keep])
        except ConfigError as e:
            text = " ".join(str(e).split())
            if f"Could not find 'species/{name}'" in text:
                text = (f"species={name}: no such species config (conf/species/{name}.yaml or "
                        "hydra.searchpath); add the file or fix the name")
            out[name] = text[:300]
    return out


def multirun_overrides(species: Sequence[str], batch_dir: Path, rerun: bool,
                       extra: Sequence[str]) -> list[str]:
    """The arguments of the batch's Hydra multirun: one job per species into ``batch_dir``."""
    # Hydra checks the overrides against the default species before it composes each job:
    # ``++`` lets a species key pass there (each species was composed with it plainly first)
    extra = [f"++{o}" if o.startswith("species.") else o for o in extra]
    return ["-m", f"species={','.join(species)}", f"dir={batch_dir}",
            *(["resume=true"] if rerun else []), *extra]


def is_rerun(batch_dir: Path) -> bool:
    """A batch dir that already holds a batch (its multirun record)."""
    return (Path(batch_dir) / "multirun.yaml").exists()


def extra_overrides(args: Sequence[str], drop: Collection[str]) -> list[str]:
    """``args`` without the keys in ``drop`` (the ones the batch sets itself)."""
    return [a for a in args if a.split("=", 1)[0].lstrip("+") not in drop]

