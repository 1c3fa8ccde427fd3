"""Wall time of ``birdflow tune``: ``python -m birdflow.bench.tuning``.

Runs the real tune (default settings, float64) on the synthetic species scaled to about
``--cells`` active cells per week (``species.synthetic.size``; 100 km cells), for each loss in
``--losses``, and prints one JSON line per run and a table: the first (cold) inner fit, the
median accepted outer step (refit + hypergradient, rejected trials included), the total, the
Newton steps and Hessian-vector products, the accepted and rejected trials, how the loop ended
and the tuning loss at its start and end. Each run's tune dir stays under ``--out``. Numbers
only, no assertions; the load of the machine is printed with them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from birdflow.app import OneLineArgumentParser, compose
from birdflow.runs import read_run_info

CELLS_PER_SIZE = 103  # the synthetic species' largest week at size 1 (cells grow ~ size^2)


def run_one(loss: str, cells: int, out: Path, extra: list[str]) -> dict:
    from birdflow.tuning.outer import tune
    from birdflow.tuning.tunedir import read_csv

    size = round(float(np.sqrt(cells / CELLS_PER_SIZE)), 3)
    run_dir = out / f"tune_{loss}_{cells}"
    cfg = compose("tune", [f"loss={loss}", f"species.synthetic.size={size}", f"run_dir={run_dir}",
                           "progress=false", "maps=false", "evaluate=false", *extra])
    t0 = time.perf_counter()
    res = tune(cfg)
    wall = time.perf_counter() - t0
    t = read_csv(run_dir / "trajectory.csv")
    acc = np.array(t["accepted"], bool)
    times = np.diff(np.r_[0.0, t["time_s"]])
    steps = np.array(t["step"])
    per_step = [times[steps == s].sum() for s in np.unique(steps[steps > 0])]
    info = read_run_info(run_dir)
    return {"loss": loss, "size": size, "n_max": int(info.get("n_max", 0)) or None,
            "wall_s": wall, "first_fit_s": float(times[0]),
            "median_outer_step_s": float(np.median(per_step)) if per_step else None,
            "accepted": int(acc.sum()) - 1, "rejected": int((~acc).sum()),
            "newton_steps": int(np.sum(t["inner_steps"])), "hvps": int(np.sum(t["inner_hvps"])),
            "cg_steps": int(np.sum(t["cg_steps"])), "ended": info.get("ended", info.get("message")),
            "loss_start": t["outer_loss"][0], "loss_end": float(np.min(
                np.array(t["outer_loss"])[acc])), "theta": list(res.theta)}


def main(argv=None) -> list[dict]:
    ap = OneLineArgumentParser(prog="python -m birdflow.bench.tuning", description=__doc__)
    ap.add_argument("--cells", type=int, default=200, help="active cells per week (about)")
    ap.add_argument("--losses", nargs="+", default=["l2", "w2"], choices=["l2", "w2"])
    ap.add_argument("--out", default="outputs/bench_tuning", help="where the tune dirs go")
    ap.add_argument("--override", nargs="*", default=[], help="more tune overrides, key=value")
    a = ap.parse_args(argv)
    rows = []
    for loss in a.losses:
        row = run_one(loss, a.cells, Path(a.out), a.override)
        row["load_1min"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| loss | size | first fit s | median outer step s | total s | accepted / rejected "
          "| Newton steps | HVPs + CG steps | tuning loss start → end | ended |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        step = f"{r['median_outer_step_s']:.1f}" if r["median_outer_step_s"] else "—"
        print(f"| {r['loss']} | {r['size']} | {r['first_fit_s']:.1f} | {step} | {r['wall_s']:.0f} "
              f"| {r['accepted']} / {r['rejected']} | {r['newton_steps']} | {r['hvps']:,} + "
              f"{r['cg_steps']:,} | {r['loss_start']:.4f} → {r['loss_end']:.4f} | {r['ended']} |")
    print(f"(1-minute load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)")
    return rows


if __name__ == "__main__":
    main()
