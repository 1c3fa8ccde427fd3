"""``birdflow evaluate run=<run dir> [tracks=<csv>] [truth=<run dir>] [w2=false] ...``.

Also ``python -m birdflow.evaluate``. Writes ``<run>/metrics.json`` (on another tracks file:
``<run>/metrics_<file stem>.json``) and prints the report
(:func:`birdflow.evaluation.evaluate.evaluate_run`); options in ``conf/evaluate.yaml``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.app import numbers
from birdflow.cli.command import command
from birdflow.errors import ConfigError
from birdflow.evaluation.evaluate import evaluate_run, format_report

OPTIONS = ("w2", "w2_epsilon", "win_prob", "min_days", "max_days", "min_km", "max_km")


@command("evaluate", "birdflow evaluate")
def main(cfg: DictConfig) -> dict:
    numbers(cfg, "w2_epsilon", "min_days", "max_days", "min_km", "max_km",
            positive=("w2_epsilon", "max_days", "max_km"), non_negative=("min_days", "min_km"))
    opts = {k: cfg[k] for k in OPTIONS if cfg.get(k) is not None}
    if cfg.week_range is not None:
        wr = list(cfg.week_range) if not isinstance(cfg.week_range, str) \
            else cfg.week_range.replace(",", "-").split("-")
        try:
            opts["week_range"] = (int(wr[0]), int(wr[1]))
        except (ValueError, IndexError):
            raise ConfigError(f"week_range={cfg.week_range!r}: give two S&T weeks, e.g. "
                              "week_range=[10,20]") from None
    result = evaluate_run(cfg.run, tracks=cfg.tracks, truth=cfg.truth, **opts)
    print(format_report(result))
    print(f"\nwrote {result['metrics_file']}")
    return result


if __name__ == "__main__":
    main()
