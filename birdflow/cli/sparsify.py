"""``birdflow sparsify run=<run dir> [method=..] [p=0.99] [out=<run dir>] [tracks=<csv>]``.

Also ``python -m birdflow.sparsify``. Prints, for the full model and each of BirdFlowR's
sparsify methods at ``p`` (:func:`birdflow.evaluation.sparsity.sparsify_report`), the density,
the mass lost, the fit to S&T and the mean interval log-likelihood of the tracks (the run's
own by default). With ``out=`` it writes the model sparsified with ``method`` as a new run
dir (:func:`birdflow.evaluation.sparsity.write_sparse_run`) that every other command reads; ``birdflow export
run=<out>`` then gives a sparse BirdFlowR file. Options: :class:`birdflow.cli.settings.SparsifySettings`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.cli.settings import SparsifySettings, settings
from birdflow.errors import ConfigError
from birdflow.evaluation.sparsity import sparsify_report, write_sparse_run
from birdflow.model.fitted import load_model
from birdflow.model.sparsify import METHODS
from birdflow.runs import run_path


@command("sparsify", "birdflow sparsify")
def main(cfg: DictConfig) -> pd.DataFrame:
    s = settings(cfg, SparsifySettings)
    run = Path(s.run)
    model = load_model(run)
    methods = [s.method] if s.method is not None else list(METHODS)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"method={m!r}: unknown sparsify method; use one of {list(METHODS)}")
    tracks = s.tracks or run_path(run, "tracks")
    table = sparsify_report(model, tracks if s.score else None, methods, s.p)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if s.out is not None:
        if s.method is None:
            raise ConfigError("out= writes one sparse model: choose it with method=<"
                              + "|".join(METHODS) + ">")
        out = write_sparse_run(model, run, s.out, s.method, s.p, fix=s.fix,
                               p_protected=s.p_protected)
        print(f"wrote {out}")
    return table


if __name__ == "__main__":
    main()
