"""``birdflow validate run=<run dir> [tracks=<csv>] [season=prebreeding|postbreeding]``.

Also ``python -m birdflow.validate``. Writes ``<run>/validation/`` and prints the headline
table and which parts took the time (:func:`birdflow.evaluation.validation.validate_run`);
options in ``conf/validate.yaml``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.evaluation.report import headline_table
from birdflow.evaluation.validation import format_timings, validate_run


@command("validate", "birdflow validate")
def main(cfg: DictConfig) -> dict:
    result = validate_run(cfg.run, tracks=cfg.tracks, season=cfg.season, out_dir=cfg.out,
                          n_routes=int(cfg.n_routes), seed=int(cfg.seed))
    print(headline_table(result["headline"]))
    for note in result["notes"]:
        print(f"note: {note}")
    print(format_timings(result["timings_s"]))
    print(f"report: {result['report']} (and report.html beside it)")
    return result


if __name__ == "__main__":
    main()
