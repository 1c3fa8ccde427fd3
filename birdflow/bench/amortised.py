"""Amortised-Sinkhorn gradient bias along a training run: ``python -m birdflow.bench.amortised``.

Trains the synthetic species (or any species: ``--override species=...``) with W2 and
``loss.w2.iterations_per_step`` = k for each budget k and, every ``--every`` steps, compares
the training step's gradient with the gradient from a tightly converged solve at the same
parameters and warm start (threshold 1e-5 in float32, 1e-7 in float64): the relative bias
``||g_k - g*|| / ||g*||`` and the cosine, for the whole objective and for the W2 term alone.
The default full solve (``threshold``, ``iterations_per_step: null``) is measured the same
way at the same points as a yardstick. Prints one JSON line per check, then a summary.
Numbers only, no assertions.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.app import OneLineArgumentParser, compose
from birdflow.losses.objective import LossConfig, init_loss_state, make_problem, objective
from birdflow.model.markov import WeekIndex, init_params
from birdflow.synthetic import load_or_preprocess
from birdflow.training.loop import make_optimizer, make_update
from birdflow.training.settings import OptimSettings


def _flat(tree) -> jax.Array:
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def gradients(params, problem, index: WeekIndex, cfg: LossConfig, loss_state, step):
    """(gradient of the objective, gradient of its location term), both flattened."""
    def total(p):
        return objective(p, problem, index, cfg, loss_state, step)[0]

    def obs(p):
        return objective(p, problem, index, cfg, loss_state, step)[1][0]["obs"]

    return _flat(jax.grad(total)(params)), _flat(jax.grad(obs)(params))


def compare(g: jax.Array, ref: jax.Array) -> dict:
    """Relative bias and cosine of ``g`` against ``ref``."""
    nr = float(jnp.linalg.norm(ref))
    return {"bias": float(jnp.linalg.norm(g - ref)) / nr,
            "cos": float(g @ ref) / (float(jnp.linalg.norm(g)) * nr)}


def run_budget(k: int | None, ds, index, base: LossConfig, opt: OptimSettings, steps: int,
               every: int, seed: int) -> list[dict]:
    """Train with budget ``k`` (None = full solves) and check the gradient every ``every`` steps."""
    cfg = dataclasses.replace(base, w2=dataclasses.replace(base.w2, iterations_per_step=k))
    tight_thr = 1e-7 if jax.config.jax_enable_x64 else 1e-5
    tight = dataclasses.replace(base, w2=dataclasses.replace(
        base.w2, iterations_per_step=None, threshold=tight_thr, max_iterations=20000))
    full = dataclasses.replace(base, w2=dataclasses.replace(base.w2, iterations_per_step=None))
    problem = make_problem(ds, index, cfg)
    optimizer, _ = make_optimizer(opt)
    params = init_params(jax.random.PRNGKey(seed), index)
    state = {"params": params, "opt_state": optimizer.init(params),
             "loss_state": init_loss_state(problem, index, cfg), "step": jnp.asarray(0, jnp.int32)}
    state = jax.tree.map(jnp.array, state)
    update = make_update(index, cfg, optimizer)
    grad_fns = {name: jax.jit(lambda p, prob, s, t, c=c: gradients(p, prob, index, c, s, t))
                for name, c in (("case", cfg), ("tight", tight), ("full", full))}
    rows, times, last_error = [], [], None
    for step in range(steps + 1):
        if step % every == 0 and step > 0:
            args = (state["params"], problem, state["loss_state"], state["step"])
            g = {name: fn(*args) for name, fn in grad_fns.items()}
            row = {"budget": k, "step": step, "n_cells": int(ds.sizes["cell"])}
            for name in ("case", "full"):
                for part, i in (("total", 0), ("w2", 1)):
                    for key, v in compare(g[name][i], g["tight"][i]).items():
                        row[f"{name}_{part}_{key}"] = v
            row["sinkhorn_error"] = last_error
            rows.append(row)
            print(json.dumps(row), flush=True)
        if step == steps:
            break
        t0 = time.perf_counter()
        state, terms, _ = update(state, problem)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
        last_error = float(terms["sinkhorn_error"])
    step_ms = 1e3 * float(np.median(times[5:] or times))
    for r in rows:
        r["step_ms"] = step_ms
    return rows


def summary(rows: list[dict]) -> str:
    """One line per budget: median and worst bias/cosine over the checks, step time."""
    lines = [f"{'budget':>7} {'cells':>6} {'step ms':>8} {'bias med':>9} {'bias max':>9} "
             f"{'cos min':>8} {'W2 bias med':>11} {'W2 cos min':>10} {'full: bias med':>14} "
             f"{'full: W2 cos min':>16}"]
    for k in dict.fromkeys(r["budget"] for r in rows):
        rs = [r for r in rows if r["budget"] == k]

        def col(key, f, rs=rs):
            return f([r[key] for r in rs])

        lines.append(f"{'full' if k is None else k:>7} {rs[0]['n_cells']:>6} {rs[0]['step_ms']:8.1f} "
                     f"{col('case_total_bias', np.median):9.2e} {col('case_total_bias', max):9.2e} "
                     f"{col('case_total_cos', min):8.5f} {col('case_w2_bias', np.median):11.2e} "
                     f"{col('case_w2_cos', min):10.5f} {col('full_total_bias', np.median):14.2e} "
                     f"{col('full_w2_cos', min):16.5f}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = OneLineArgumentParser(prog="python -m birdflow.bench.amortised",
                               description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20],
                    help="Sinkhorn iterations per step to measure (loss.w2.iterations_per_step)")
    ap.add_argument("--steps", type=int, default=600, help="training steps per budget")
    ap.add_argument("--every", type=int, default=50, help="steps between gradient checks")
    ap.add_argument("--override", nargs="*", default=[],
                    help="train config overrides, e.g. species.synthetic.size=1.7 loss.w2.epsilon_cells=2")
    a = ap.parse_args(argv)
    cfg = compose("train", ["loss=w2", *a.override])
    ds, _ = load_or_preprocess(cfg.species, cfg.data)
    index = WeekIndex.from_bfdata(ds)
    base = LossConfig.from_mapping(cfg.loss)
    opt = OptimSettings.from_mapping(cfg.optim)
    rows = []
    for k in a.budgets:
        rows += run_budget(k, ds, index, base, opt, a.steps, a.every, int(cfg.seed))
    print(f"\n{cfg.species.code}: {int(ds.sizes['cell'])} cells, n_max {index.n_max}; bias = "
          "||g - g*|| / ||g*|| against a tight solve (same parameters, same warm start); 'full' = "
          f"the convergence-checked solve at threshold {base.w2.threshold:g}")
    print(summary(rows))
    return rows


if __name__ == "__main__":
    main()
