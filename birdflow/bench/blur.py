"""Default W2 training against full solves over ranges and blurs: ``python -m birdflow.bench.blur``.

For each range (cells across) and each ``loss.w2.epsilon_cells`` (epsilon in one-cell costs)
it trains a small float64 problem (a blob moving across a strip of ``--rows`` x ``across``
cells for ``--weeks`` weeks) twice from the same start: with the shipped W2 settings
(amortised Sinkhorn, ``iterations_per_step: 10``, guarded by ``error_tolerance``) and with
full solves to ``threshold`` every step (``iterations_per_step: null``). It reports both runs'
mean TV against S&T and their objective re-evaluated at the final parameters by a tight
solve, the largest L1 marginal error the default run logged after step 0, its steps extended
past the budget or unconverged; then a third run with ``grad_mode: implicit`` (otherwise the
default, amortised) whose training gradient is compared at a few steps with a tight solve's at
the same parameters (worst relative error, largest norm ratio) and its fallback count. Prints one JSON line per row, then a table. Numbers only, no assertions.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.app import OneLineArgumentParser
from birdflow.bench.amortised import compare, gradients
from birdflow.data.bfdata import make_bfdata
from birdflow.data.weeks import week_dates
from birdflow.losses.objective import LossConfig, W2Config, init_loss_state, make_problem, objective
from birdflow.model.markov import WeekIndex, init_params, marginals
from birdflow.training.loop import make_optimizer, make_update
from birdflow.training.settings import OptimSettings

TIGHT = {"iterations_per_step": None, "threshold": 1e-8, "max_iterations": 50000}


def range_bfdata(across: int, rows: int = 4, weeks: int = 4, seed: int = 0):
    """A ``rows`` x ``across`` strip of 100 km cells; a blob moves a third of it over the weeks."""
    rng = np.random.default_rng(seed)
    rows = min(rows, across)
    yy, xx = np.mgrid[:rows, :across]
    t = np.arange(weeks)
    centre = across * (0.3 + 0.4 * t / max(weeks - 1, 1))
    width = max(across / 6, 1.0)
    cube = np.exp(-((xx[None] - centre[:, None, None]) / width) ** 2 - ((yy[None] - rows / 2) / rows) ** 2)
    cube = cube * (0.5 + rng.random(cube.shape))
    x, y = np.arange(across) * 1e5 + 5e4, 3.5e6 - np.arange(rows) * 1e5
    return make_bfdata(cube, x, y, "ESRI:102008", t + 1, week_dates(2022)[:weeks],
                       species_code="range", version_year=2022, res_km=100.0, source="bench")


def _train(ds, index, cfg: LossConfig, steps: int, seed: int, check=None, check_at=()):
    """Adam steps of the real training update; returns final state, history, ms per step and
    ``check(state, problem)`` taken before each step of ``check_at``."""
    optimizer, _ = make_optimizer(OptimSettings(steps=steps))
    problem = make_problem(ds, index, cfg)
    params = init_params(jax.random.key(seed), index, dtype=jnp.float64)
    state = {"params": params, "opt_state": optimizer.init(params),
             "loss_state": init_loss_state(problem, index, cfg), "step": jnp.asarray(0, jnp.int32)}
    update = make_update(index, cfg, optimizer)
    history, times, checks = [], [], []
    for step in range(steps):
        if step in check_at:
            checks.append(check(state, problem))
        t0 = time.perf_counter()
        state, terms, _ = update(jax.tree.map(jnp.array, state), problem)
        terms = {k: float(v) for k, v in jax.device_get(terms).items()}
        times.append(time.perf_counter() - t0)
        history.append(terms)
    return state, history, 1e3 * float(np.median(times[2:] or times)), checks


def _tight_fit(params, ds, index, cfg: LossConfig) -> tuple[float, float]:
    """(objective from a tight cold solve, mean TV of the model's marginals against S&T)."""
    tight = dataclasses.replace(cfg, w2=dataclasses.replace(cfg.w2, **TIGHT))
    problem = make_problem(ds, index, tight)
    total, _ = objective(params, problem, index, tight, init_loss_state(problem, index, tight), 0)
    mu, _ = marginals(params, index)
    tv = 0.5 * jnp.abs(mu - problem.targets).sum(-1).mean()
    return float(total), float(tv)


def implicit_checker(index, cfg: LossConfig):
    """``check(state, problem)``: the training step's ``implicit`` gradient (its own warm start)
    against a tight cold solve's at the same parameters: relative error, norm ratio, fallbacks."""
    tight = dataclasses.replace(cfg, w2=dataclasses.replace(cfg.w2, **TIGHT))
    grad = jax.jit(lambda p, prob, s, k, c: gradients(p, prob, index, c, s, k)[0], static_argnums=4)
    terms = jax.jit(lambda p, prob, s, k: objective(p, prob, index, cfg, s, k)[1][0])

    def check(state, problem):
        args = (state["params"], problem)
        g = grad(*args, state["loss_state"], state["step"], cfg)
        g_tight = grad(*args, init_loss_state(problem, index, tight), 0, tight)
        t = terms(*args, state["loss_state"], state["step"])
        return {"rel_err": compare(g, g_tight)["bias"],
                "norm_ratio": float(jnp.linalg.norm(g) / jnp.linalg.norm(g_tight)),
                "fallback": int(t["n_fallback"]), "error": float(t["sinkhorn_error"])}

    return check


def run_cell(across: int, eps_cells: float, a) -> dict:
    """One table row: default vs full-solve training at ``eps_cells`` on a range ``across``."""
    ds = range_bfdata(across, a.rows, a.weeks, a.seed)
    index = WeekIndex.from_bfdata(ds)
    w2 = W2Config(epsilon_cells=eps_cells, **({} if a.tolerance is None else
                                              {"error_tolerance": a.tolerance}))
    row = {"across": across, "epsilon_cells": eps_cells, "cells": int(ds.sizes["cell"]),
           "n_max": index.n_max}
    runs = {"default": LossConfig(location="w2", w2=w2),
            "full": LossConfig(location="w2", w2=dataclasses.replace(w2, iterations_per_step=None))}
    for name, cfg in runs.items():
        state, hist, ms, _ = _train(ds, index, cfg, a.steps, a.seed)
        obj, tv = _tight_fit(state["params"], ds, index, cfg)
        row |= {f"{name}_tv": tv, f"{name}_objective": obj, f"{name}_step_ms": ms,
                f"{name}_max_error": max(h["sinkhorn_error"] for h in hist[1:]),
                f"{name}_steps_unconverged": sum(h["n_unconverged"] > 0 for h in hist),
                f"{name}_steps_extended": sum(h["n_extended"] > 0 for h in hist)}
    row["tv_diff"] = row["default_tv"] - row["full_tv"]
    row["objective_rel_diff"] = (row["default_objective"] - row["full_objective"]) / abs(
        row["full_objective"])
    if not a.implicit:
        return row | {"implicit_rel_err": np.nan, "implicit_norm_ratio": np.nan,
                      "implicit_fallback": -1, "implicit_max_error": np.nan}
    # grad_mode=implicit under amortisation (matrix cost: the grid kernel is danskin only)
    impl = LossConfig(location="w2", w2=dataclasses.replace(w2, grad_mode="implicit"))
    at = sorted({s for s in (1, 2, 5, 10, 30, a.steps // 2, a.steps - 1) if 0 < s < a.steps})
    _, hist, _, checks = _train(ds, index, impl, a.steps, a.seed, implicit_checker(index, impl), at)
    worst = max(checks, key=lambda c: c["rel_err"])
    row |= {"implicit_rel_err": worst["rel_err"],
            "implicit_norm_ratio": max(c["norm_ratio"] for c in checks),
            "implicit_fallback": sum(int(h["n_fallback"]) for h in hist),
            "implicit_max_error": max(h["sinkhorn_error"] for h in hist[1:])}
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'across':>6} {'eps cells':>9} {'cells':>5} {'TV default':>10} {'TV full':>8} "
            f"{'obj default':>11} {'obj full':>9} {'obj diff':>8} {'max err':>8} {'ext':>4} "
            f"{'unconv':>6} {'ms dflt/full':>12} {'impl err':>8} {'impl/tight':>10} {'fallbk':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['across']:>6} {r['epsilon_cells']:>9g} {r['cells']:>5} {r['default_tv']:10.4f} "
            f"{r['full_tv']:8.4f} {r['default_objective']:11.4f} {r['full_objective']:9.4f} "
            f"{r['objective_rel_diff']:8.1e} {r['default_max_error']:8.1e} "
            f"{r['default_steps_extended']:>4} {r['default_steps_unconverged']:>6} "
            f"{r['default_step_ms']:5.0f}/{r['full_step_ms']:<6.0f} {r['implicit_rel_err']:8.1e} "
            f"{r['implicit_norm_ratio']:10.3f} {r['implicit_fallback']:>6}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = OneLineArgumentParser(prog="python -m birdflow.bench.blur",
                               description=__doc__.splitlines()[0])
    ap.add_argument("--across", type=int, nargs="+", default=[5, 10, 30, 100],
                    help="range sizes, cells across")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0],
                    help="loss.w2.epsilon_cells values (epsilon in one-cell costs)")
    ap.add_argument("--rows", type=int, default=4, help="rows of the strip (at most across)")
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=None,
                    help="loss.w2.error_tolerance (default: the shipped value)")
    ap.add_argument("--no-implicit", dest="implicit", action="store_false",
                    help="skip the grad_mode=implicit run")
    a = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rows = []
    for across in a.across:
        for eps in a.eps:
            rows.append(run_cell(across, eps, a))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.rows} x across strips, {a.weeks} weeks, {a.steps} Adam steps, float64; TV and "
          "objective at the final parameters (objective from a tight solve); max err: largest L1 "
          "marginal error the default run logged after step 0; ext/unconv: its steps extended "
          "past 10 iterations / unconverged; impl: the implicit run's training gradient vs a "
          "tight solve's (worst relative error, largest norm ratio) and its fallback count")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
