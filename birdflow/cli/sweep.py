"""``birdflow sweep summarize dir=<sweep dir> [threshold=0.9] [cor_metric=..] [plots=true]``.

Also ``python -m birdflow.sweep summarize dir=...``. Writes the sweep's table, its best model
per species and tuning plots into the sweep dir (:func:`birdflow.sweeps.sweep.summarize`).
A sweep itself is a multirun of training: ``birdflow train -m experiment=birdflow_grid ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig

from birdflow.app import fail
from birdflow.cli.command import command
from birdflow.sweeps.summary import markdown
from birdflow.sweeps.sweep import brief_table, summarize

ACTIONS = ("summarize",)


@command("sweep", "birdflow sweep")
def _summarize(cfg: DictConfig) -> int:
    rows, best = summarize(cfg.dir, float(cfg.threshold), str(cfg.cor_metric), bool(cfg.plots))
    print(markdown(*brief_table(rows)))
    print("best models:")
    print(markdown(best, [c for c in ("species", "criterion", "run", "loss", "value", "note")
                          if any(c in b for b in best)]))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "running", "missing")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; tables in {cfg.dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``summarize`` (the one action; it may be left out) followed by Hydra overrides."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ACTIONS:
        args = args[1:]
    elif args and "=" not in args[0] and not args[0].startswith("-"):
        fail("birdflow sweep", f"{args[0]!r}: unknown action; use `birdflow sweep summarize dir=<sweep dir>`")
    return _summarize(args)


if __name__ == "__main__":
    main()
