"""Training-step benchmark: ``python -m birdflow.bench [--cells 300 1000] [--repeats 5]``.

Times the real training step (``birdflow.training.loop.make_update``: value and gradient of the full
objective plus the Adam update) on a synthetic 52-week cyclic problem with about ``n`` active
cells per week, for L2, W2 with each gradient mode, W2 speed-setting variants (``--variants``)
and the REFERENCE W2 of the research code (:mod:`birdflow.bench.reference`). Prints one JSON
line per case, then a summary table. No assertions: numbers only.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.app import OneLineArgumentParser
from birdflow.bench.machine import _memory, device_info
from birdflow.bench.reference import (
    like_for_like_config,
    make_reference_update,
    reference_costs,
)
from birdflow.bench.report import table
from birdflow.bench.variants import VARIANTS
from birdflow.bench.w2checks import grad_vs_danskin, grad_vs_tight, tight_w2, w2_term_memory
from birdflow.data.bfdata import make_bfdata
from birdflow.data.weeks import week_dates
from birdflow.losses.objective import LossConfig, W2Config, init_loss_state, make_problem
from birdflow.model.markov import WeekIndex, init_params
from birdflow.training.loop import make_optimizer, make_update
from birdflow.training.settings import OptimSettings

GRAD_MODES = ("implicit", "danskin", "unroll")
DEFAULT = "w2-default"  # W2Config() as shipped (conf/loss/w2.yaml)
LIKE = "w2-danskin[reference-settings]"  # like-for-like with the reference
BYTES_PER_PARAMETER_ACCESSES = 8  # read logits, m, v; write logits, m, v; write + read grads


MAX_EXTENT_M = 4.0e6  # larger grids get smaller cells: ESRI:102008 is meaningless far out


def synthetic_bfdata(n: int, seed: int = 0):
    """A 52-week cyclic BirdFlowData with about ``n`` active cells per week (a moving blob).

    Cells are 100 km while the grid stays within 4,000 km (n up to ~1,360), smaller beyond.
    """
    side = int(np.ceil(np.sqrt(n / 0.85)))
    res_m = min(1e5, MAX_EXTENT_M / side)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    weeks = np.arange(52)
    centre = side / 2 + side / 4 * np.sin(2 * np.pi * weeks / 52)  # a north-south migration
    cube = np.exp(-((yy[None] - centre[:, None, None]) ** 2 + (xx[None] - side / 2) ** 2) / side)
    cube *= rng.random(cube.shape) > 0.2  # ~20 % of cells outside each week's mask
    x, y = np.arange(side) * res_m + res_m / 2, 4e6 - np.arange(side) * res_m
    return make_bfdata(cube, x, y, "ESRI:102008", weeks + 1, week_dates(2022),
                       species_code="bench", version_year=2022, res_km=res_m / 1e3, source="bench")


def _run(update, state, args: tuple, warmup: int, repeats: int):
    """Generator: the first ``next`` compiles and warms up, each further one times one step.

    Returns (as ``StopIteration.value``) the result dict and the state before the last step.
    """
    t0 = time.perf_counter()
    compiled = update.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    memory, memory_kind = _memory(compiled)
    for _ in range(warmup):
        state, terms, _ = compiled(state, *args)
    jax.block_until_ready(state)
    yield
    times, iters, before = [], [], None
    for r in range(repeats):
        if r == repeats - 1:
            before = jax.tree.map(jnp.copy, {k: state[k] for k in ("params", "loss_state", "step")})
        t0 = time.perf_counter()
        state, terms, _ = compiled(state, *args)
        jax.block_until_ready((state, terms))
        times.append(time.perf_counter() - t0)
        if "sinkhorn_iterations" in terms:
            iters.append(float(terms["sinkhorn_iterations"]))
        if r < repeats - 1:
            yield
    res = {"compile_s": compile_s, "step_ms": 1e3 * float(np.median(times)),
           "step_ms_min": 1e3 * min(times), "repeats": repeats, "warmup": warmup,
           "memory_bytes": memory, "memory_kind": memory_kind,
           "sinkhorn_iterations": float(np.median(iters)) if iters else None}
    res["terms"] = {k: float(v) for k, v in terms.items()}
    return res, before


def case_runner(name: str, ds, index: WeekIndex, w2cfg: W2Config | None, warmup: int,
                repeats: int, accuracy: bool = True):
    """One benchmark case as a generator (see :func:`_run`); returns its row.

    ``w2cfg`` None = L2; name "reference" = the research-code W2.
    """
    cfg = LossConfig(location="l2" if w2cfg is None or name == "reference" else "w2",
                     w2=w2cfg or W2Config())
    optimizer, _ = make_optimizer(OptimSettings())
    problem = make_problem(ds, index, cfg)
    params = init_params(jax.random.key(0), index)
    state = {"params": params, "opt_state": optimizer.init(params),
             "loss_state": init_loss_state(problem, index, cfg), "step": jnp.asarray(0, jnp.int32)}
    state = jax.tree.map(jnp.array, state)
    if name == "reference":
        costs = [jnp.asarray(c, jnp.float32) for c in reference_costs(ds["distance_km"].values, index)]
        update, args = make_reference_update(index, cfg, optimizer), (problem, costs)
    else:
        update, args = make_update(index, cfg, optimizer), (problem,)
    res, before = yield from _run(update, state, args, warmup, repeats)
    out = {"case": name, "n_max": index.n_max, "n_cells": int(ds.sizes["cell"]),
           "weeks": index.n_weeks, "parameters": index.n_max * (1 + index.n_transitions * index.n_max),
           **res}
    if cfg.location == "w2":
        out["w2"] = res["terms"]["w2"]
        if accuracy:
            out.update(tight_w2(before, problem, index, cfg))
            out["w2_rel_err"] = abs(out["w2"] - out["w2_tight"]) / abs(out["w2_tight"])
        if cfg.w2.grad_mode != "danskin":
            out.update(grad_vs_danskin(before, problem, index, cfg))
        elif accuracy:
            out.update(grad_vs_tight(before, problem, index, cfg))
        out.update(w2_term_memory(ds, index, cfg.w2))
    elif name == "reference":
        out["w2"] = res["terms"]["w2"]
    return out


def run_cases(runners: list, interleave: bool) -> list:
    """Drive :func:`case_runner` generators: one after another, or (``interleave``) all
    compiled and warmed up first, then one timed step of each in turn, so that a change in
    the machine's load hits every case alike (their ratios stay fair on a shared machine).
    A runner that raises gives the exception as its result."""
    out: list = [None] * len(runners)

    def advance(i):
        try:
            next(runners[i])
            return True
        except StopIteration as stop:
            out[i] = stop.value
        except jax.errors.JaxRuntimeError as e:
            out[i] = e
        return False

    if not interleave:
        for i in range(len(runners)):
            while advance(i):
                pass
        return out
    live = [i for i in range(len(runners)) if advance(i)]
    while live:
        live = [i for i in live if advance(i)]
    return out


def run_case(name: str, ds, index: WeekIndex, w2cfg: W2Config | None, warmup: int,
             repeats: int, accuracy: bool = True) -> dict:
    """One benchmark case, run to the end (see :func:`case_runner`)."""
    r = run_cases([case_runner(name, ds, index, w2cfg, warmup, repeats, accuracy)], False)[0]
    if isinstance(r, Exception):
        raise r
    return r


def cases(selected: list[str], variants: list[str]) -> list[tuple[str, W2Config | None]]:
    """(name, W2 config) pairs; None = L2."""
    out: list[tuple[str, W2Config | None]] = []
    for c in selected:
        if c == "l2":
            out.append(("l2", None))
        elif c == "default":
            out.append((DEFAULT, W2Config()))
        elif c in GRAD_MODES:
            out.append((f"w2-{c}", W2Config(grad_mode=c)))
        elif c == "reference":
            out.append(("reference", None))
        elif c == "like":  # our solver at the reference's cost, epsilon and threshold
            out.append((LIKE, None))  # its W2Config depends on the data (see main)
        else:
            raise SystemExit(f"--cases: unknown case {c!r}; use l2, default, "
                             f"{', '.join(GRAD_MODES)}, reference, like")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {v!r}; use {', '.join(VARIANTS)}")
        out.append((f"w2-danskin[{v}]", W2Config(**VARIANTS[v])))
    return out


def _add_ratios(rows: list[dict], info: dict) -> None:
    """W2/L2 and reference/ours step-time ratios, and the L2 step's byte bound."""
    l2 = next((r for r in rows if r["case"] == "l2"), None)
    ours = next((r for r in rows if r["case"] in (DEFAULT, "w2-danskin") and not r.get("error")),
                None)
    like = next((r for r in rows if r["case"] == LIKE and not r.get("error")), None)
    for r in rows:
        if r.get("error"):
            continue
        if l2 is not None:
            r["ratio_vs_l2"] = r["step_ms"] / l2["step_ms"]
        if ours is not None and r["case"] == "reference":  # different cost, epsilon, threshold
            r["ref_over_ours"] = r["step_ms"] / ours["step_ms"]
        if like is not None and r["case"] == "reference":  # the same problem, our solver
            r["ref_over_like"] = r["step_ms"] / like["step_ms"]
        if r["case"] == "l2":
            n_bytes = BYTES_PER_PARAMETER_ACCESSES * 4 * r["parameters"]
            r["l2_min_bytes"] = n_bytes
            r["l2_byte_bound_ms"] = 1e3 * n_bytes / (info["bandwidth_GBps"] * 1e9)


def main(argv=None) -> list[dict]:
    on_cpu = jax.default_backend() == "cpu"
    ap = OneLineArgumentParser(prog="birdflow bench", description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[300, 1000] if on_cpu else [1000, 2000, 4000],
                    help="active cells per week (default: 300 1000 on CPU, 1000 2000 4000 on GPU)")
    ap.add_argument("--cases", default="l2,default,implicit,unroll,like,reference",
                    help="comma list of l2, default (W2 as configured by default), implicit, "
                         "danskin, unroll (W2 defaults with that grad_mode), like (our solver at "
                         "the reference's cost, epsilon and threshold), reference")
    ap.add_argument("--variants", default="", help=f"comma list of W2 variants: {', '.join(VARIANTS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per case (median reported)")
    ap.add_argument("--warmup", type=int, default=30,
                    help="untimed training steps after compiling (default 30: past the first "
                         "steps, where the model moves fast and warm-started Sinkhorn needs "
                         "extra iterations; a 600-step run settles at 10 per step)")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed steps of the slow reference")
    ap.add_argument("--no-accuracy", action="store_true",
                    help="skip the tightly converged W2 solve and gradient")
    ap.add_argument("--sequential", action="store_true",
                    help="time each case to the end before the next (default: interleaved, one "
                         "timed step of each case in turn, all held in memory at once)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the compiled memory of each W2 case's W2 term (no model, no timing)")
    a = ap.parse_args(argv)
    info = device_info()
    print(json.dumps({"device_info": info}), flush=True)
    selected = [c for c in a.cases.split(",") if c]
    todo = cases(selected, [v for v in a.variants.split(",") if v])
    rows = []
    for n in a.cells:
        ds = synthetic_bfdata(n)
        index = WeekIndex.from_bfdata(ds)
        block = []
        runners, names = [], []
        for name, w2cfg in todo:
            ref = name == "reference"
            if name == LIKE:
                w2cfg = like_for_like_config(ds["distance_km"].values, index,
                                             float(ds.attrs["res_km"]))
            if a.memory_only:
                if w2cfg is not None and not ref:
                    block.append({"case": name, "n_max": index.n_max,
                                  "n_cells": int(ds.sizes["cell"]),
                                  **w2_term_memory(ds, index, w2cfg)})
                    print(json.dumps(block[-1]), flush=True)
                continue
            names.append(name)
            runners.append(case_runner(name, ds, index, w2cfg, warmup=1 if ref else a.warmup,
                                       repeats=a.ref_repeats if ref else a.repeats,
                                       accuracy=not a.no_accuracy))
        for name, r in zip(names, run_cases(runners, not a.sequential), strict=True):
            if isinstance(r, Exception):  # e.g. implicit mode's linear solve failing
                r = {"case": name, "n_max": index.n_max, "compile_s": None, "step_ms": None,
                     "error": next((ln.strip() for ln in str(r).splitlines() if "Error:" in ln
                                    and "Traceback" not in ln), str(r).splitlines()[0])[:300]}
            r["requested_cells"], r["load_avg_1min"] = n, os.getloadavg()[0]
            block.append(r)
        rows += block
        if a.memory_only:
            continue
        _add_ratios(block, info)
        for r in block:
            print(json.dumps(r), flush=True)
    print(f"\n{info['device']} ({info['backend']}), jax {info['jax']}, ott-jax {info['ott']}, "
          f"52 weeks; bandwidth {info['bandwidth_GBps']:.0f} GB/s ({info['bandwidth_source']})")
    if a.memory_only:
        for r in rows:
            print(f"{r['n_max']:>6} {r['n_cells']:>6} {r['case']:<34} {r['w2_cost']:<7} "
                  f"W2 term {r['w2_term_memory_bytes'] / 2**20:10.1f} MiB")
        return rows
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
