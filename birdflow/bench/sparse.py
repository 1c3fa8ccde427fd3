"""Dense vs neighbourhood-sparse transitions: ``python -m birdflow.bench.sparse``.

``python -m birdflow.bench.sparse [--cells 1000 4000 16000] [--radius-cells 6] [--repeats 3]``
times the real L2 training step (:func:`birdflow.training.loop.make_update`: value, gradient
and Adam update) on the bench's 52-week moving-blob problem (:func:`birdflow.bench.core.
synthetic_bfdata`: 100 km cells up to ~1,360 cells per week, smaller beyond) with about ``n``
active cells per week, dense and with the transitions cut to ``--radius-cells`` cell widths. Memory is XLA's compiled temp + argument + output bytes of
the step (what it needs at its peak; the same measure as ``python -m birdflow.bench``). A dense
step whose estimate exceeds ``--max-run-gb`` is compiled from shapes only (nothing allocated)
and reported as an estimate, not run. Prints one JSON line per row, then a table with the
dense/sparse ratios.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.app import OneLineArgumentParser
from birdflow.bench.core import _memory, synthetic_bfdata
from birdflow.losses.objective import LossConfig, init_loss_state, make_problem
from birdflow.model.markov import WeekIndex, init_params
from birdflow.model.neighbours import sparse_index
from birdflow.training.loop import make_optimizer, make_update
from birdflow.training.settings import OptimSettings


def _abstract_problem(index: WeekIndex):
    """The dense L2 Problem as shapes only (the (T, n_max, n_max) cost is never built)."""
    from birdflow.losses.objective import Problem

    f32 = jnp.float32
    T, n = index.n_transitions, index.n_max
    return Problem(jax.ShapeDtypeStruct((T + 1, n), f32), jax.ShapeDtypeStruct((T, n, n), f32),
                   jax.ShapeDtypeStruct((0, 0), f32), jax.ShapeDtypeStruct((), f32))


def step_row(ds, index: WeekIndex, repeats: int, max_run_gb: float) -> dict:
    """Compile the L2 step for ``index``; run and time it when it fits ``max_run_gb``."""
    cfg = LossConfig(location="l2")
    optimizer, _ = make_optimizer(OptimSettings())
    update = make_update(index, cfg, optimizer)
    params = jax.eval_shape(lambda: init_params(jax.random.key(0), index))
    state = {"params": params, "opt_state": jax.eval_shape(optimizer.init, params),
             "loss_state": {}, "step": jax.ShapeDtypeStruct((), jnp.int32)}
    problem = (jax.eval_shape(lambda: make_problem(ds, index, cfg)) if index.sparse
               else _abstract_problem(index))
    t0 = time.perf_counter()
    compiled = update.lower(state, problem).compile()
    row = {"layout": "sparse" if index.sparse else "dense", "n_max": index.n_max,
           "K": index.n_neighbours, "parameters": index.n_parameters(),
           "logits": int(np.prod(params["Z"].shape)) + index.n_max,
           "compile_s": time.perf_counter() - t0}
    row["memory_bytes"], row["memory_kind"] = _memory(compiled)
    if row["memory_bytes"] is not None and row["memory_bytes"] > max_run_gb * 2**30:
        row["step_ms"] = None
        row["note"] = f"not run: needs {row['memory_bytes'] / 2**30:.1f} GiB > --max-run-gb"
        return row
    problem = make_problem(ds, index, cfg)
    p = init_params(jax.random.key(0), index)
    live = {"params": p, "opt_state": optimizer.init(p),
            "loss_state": init_loss_state(problem, index, cfg), "step": jnp.asarray(0, jnp.int32)}
    live, terms, _ = compiled(live, problem)  # warm-up
    jax.block_until_ready(live)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        live, terms, _ = compiled(live, problem)
        jax.block_until_ready((live, terms))
        times.append(time.perf_counter() - t0)
    row["step_ms"] = 1e3 * float(np.median(times))
    return row


def _table(rows: list[dict]) -> str:
    head = ("| cells/week (n_max) | layout | K | parameters | memory GiB | step ms | "
            "dense/sparse parameters | dense/sparse memory | dense/sparse step |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        mem = r["memory_bytes"] / 2**30 if r["memory_bytes"] else float("nan")
        step = "—" if r["step_ms"] is None else f"{r['step_ms']:,.0f}"
        ratio = ["", "", ""]
        if r["layout"] == "sparse":
            d = next(x for x in rows if x["n_max"] == r["n_max"] and x["layout"] == "dense")
            ratio = [f"{d['parameters'] / r['parameters']:.1f}×",
                     f"{d['memory_bytes'] / r['memory_bytes']:.1f}×",
                     "—" if d["step_ms"] is None or r["step_ms"] is None
                     else f"{d['step_ms'] / r['step_ms']:.1f}×"]
        est = " (estimate, not run)" if r["step_ms"] is None else ""
        out.append(f"| {r['n_max']:,} | {r['layout']}{est} | {r['K']:,} | {r['parameters']:,} | "
                   f"{mem:,.2f} | {step} | " + " | ".join(ratio) + " |")
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    ap = OneLineArgumentParser(prog="python -m birdflow.bench.sparse",
                               description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[1000, 4000, 16000],
                    help="about this many active cells per week (default: 1000 4000 16000)")
    ap.add_argument("--radius-cells", type=float, default=6.0,
                    help="neighbourhood radius of the sparse rows in cell widths (default 6)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--max-run-gb", type=float, default=8.0,
                    help="compile-only above this estimated step memory (default 8)")
    args = ap.parse_args(argv)
    rows = []
    for n in args.cells:
        ds = synthetic_bfdata(n)
        radius_km = args.radius_cells * float(ds.attrs["res_km"])
        for index in (WeekIndex.from_bfdata(ds), sparse_index(ds, radius_km=radius_km)):
            row = {"cells_target": n, "res_km": float(ds.attrs["res_km"]),
                   "radius_km": radius_km if index.sparse else None,
                   "backend": jax.default_backend(),
                   **step_row(ds, index, args.repeats, args.max_run_gb)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(_table(rows))
    return rows


if __name__ == "__main__":
    main()
