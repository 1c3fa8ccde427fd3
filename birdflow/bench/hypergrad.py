"""Implicit vs unrolled hypergradients: time and memory as the unrolled depth K grows.

``python -m birdflow.bench.hypergrad [--cells 100] [--ks 10 30 100 300] [--repeats 3]`` builds
a 52-week synthetic problem (:func:`birdflow.bench.core.synthetic_bfdata`) with random
intervals, fits nothing (the hypergradient code is timed at fixed logits: its cost does not
depend on how converged they are), and prints one JSON line per case and a table: compile s,
median s of ``repeats`` calls after compilation, memory (CPU: the compiled function's
temp + argument + output bytes from ``memory_analysis()``; GPU: peak bytes in use) and, for
the implicit one, its CG steps (capped at ``--cg-steps``).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from birdflow.app import OneLineArgumentParser
from birdflow.bench.core import _memory, synthetic_bfdata
from birdflow.losses.objective import LossConfig
from birdflow.tuning import hypergrad, inner, likelihood


def _intervals(ds, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dyn = ds["dynamic_mask"].values
    t1 = rng.integers(0, 52, n)
    lag = rng.integers(1, 4, n)
    t2 = (t1 + lag) % 52
    return pd.DataFrame({"t1": t1, "t2": t2, "lag": lag,
                         "cell1": [rng.choice(np.flatnonzero(dyn[t])) for t in t1],
                         "cell2": [rng.choice(np.flatnonzero(dyn[t])) for t in t2]})


def _time(fn, args, repeats: int) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times)), (compiled, out)


def run(cells: int, ks: list[int], repeats: int, cg_steps: int, n_intervals: int) -> list[dict]:
    """float64, as ``birdflow tune`` runs."""
    jax.config.update("jax_enable_x64", True)
    ds = synthetic_bfdata(cells)
    cfg = LossConfig(dist_weight=0.01, ent_weight=3e-3, dist_pow=0.4)
    prob = inner.Inner.build(ds, cfg, jnp.float64)
    batch = likelihood.make_batch(_intervals(ds, n_intervals), prob.index)

    def outer(p):
        return -likelihood.mean_log_likelihood(p, prob.index, batch, batch.max_lag)

    theta = jnp.asarray(inner.theta_from_config(cfg), jnp.float64)
    params = inner.st_init(ds, prob.index, jnp.float64)  # the S&T null chain: a sane Hessian
    rows = []
    base = {"n_max": prob.index.n_max, "parameters": prob.index.n_parameters(),
            "backend": jax.default_backend()}
    imp = hypergrad.make_implicit(prob, outer, hypergrad.SolveSettings(
        damping=1.0, rtol=0.0, wtol=0.0, max_steps=cg_steps))  # no tolerance: cg_steps steps
    # (the S&T start is not a minimum: a damping as large as D keeps the system positive
    # definite, so CG does not stop at negative curvature and runs its cg_steps steps)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    c, t, (compiled, out) = _time(imp.jitted, (params, theta, {}, zeros, jnp.asarray(1.0, jnp.float64)),
                                   repeats)
    mem, how = _memory(compiled)
    rows.append({**base, "case": "implicit (CG)", "K": None, "cg_steps": int(out[3]),
                 "compile_s": c, "median_s": t, "memory_bytes": mem, "memory": how})
    for k in ks:
        un = hypergrad.make_unrolled(prob, outer, k, 1.0)
        c, t, (compiled, _) = _time(un.jitted, (theta, params, {}), repeats)
        mem, how = _memory(compiled)
        rows.append({**base, "case": "unrolled", "K": k, "cg_steps": None, "compile_s": c,
                     "median_s": t, "memory_bytes": mem, "memory": how})
    return rows


def main(argv=None) -> list[dict]:
    ap = OneLineArgumentParser(prog="python -m birdflow.bench.hypergrad", description=__doc__)
    ap.add_argument("--cells", type=int, default=100, help="active cells per week (about)")
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cg-steps", type=int, default=100)
    ap.add_argument("--intervals", type=int, default=2000)
    a = ap.parse_args(argv)
    rows = run(a.cells, a.ks, a.repeats, a.cg_steps, a.intervals)
    for r in rows:
        print(json.dumps(r))
    print(f"\n{rows[0]['parameters']:,} logits (n_max {rows[0]['n_max']}), {rows[0]['backend']}, "
          f"memory = {rows[0]['memory']}")
    print("| case | K | CG steps | compile s | median s | memory MiB |\n|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['memory_bytes'] / 2**20:,.0f}" if r["memory_bytes"] else "n/a"
        print(f"| {r['case']} | {r['K'] or ''} | {r['cg_steps'] or ''} | {r['compile_s']:.1f} | "
              f"{r['median_s']:.3f} | {mem} |")
    return rows


if __name__ == "__main__":
    main()
