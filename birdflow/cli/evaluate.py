"""``birdflow evaluate run=<run dir> [tracks=<csv>] [truth=<run dir>] [w2=false] ...``.

Also ``python -m birdflow.evaluate``. Writes ``<run>/metrics.json`` (on another tracks file:
``<run>/metrics_<file stem>.json``) and prints the report
(:func:`birdflow.evaluation.evaluate.evaluate_run`); options:
:class:`birdflow.cli.settings.EvaluateSettings`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from birdflow.cli.command import command
from birdflow.cli.settings import EvaluateSettings, settings
from birdflow.evaluation.evaluate import evaluate_run, format_report

OPTIONS = ("w2", "w2_epsilon", "win_prob", "min_days", "max_days", "min_km", "max_km")


@command("evaluate", "birdflow evaluate")
def main(cfg: DictConfig) -> dict:
    s = settings(cfg, EvaluateSettings)
    opts = {k: getattr(s, k) for k in OPTIONS if getattr(s, k) is not None}
    if s.week_range is not None:
        opts["week_range"] = s.week_pair()
    result = evaluate_run(s.run, tracks=s.tracks, truth=s.truth, **opts)
    print(format_report(result))
    print(f"\nwrote {result['metrics_file']}")
    return result


if __name__ == "__main__":
    main()
