"""Training-step benchmark: ``python -m birdflow.bench [--cells 300 1000] [--repeats 5]``.

Times the real training step (``birdflow.training.loop.make_update``: value and gradient of the full
objective plus the Adam update) on a synthetic 52-week cyclic problem with about ``n`` active
cells per week, for L2, W2 with each gradient mode, W2 speed-setting variants (``--variants``)
and the REFERENCE W2 of the research code (:mod:`birdflow.bench.reference`). Prints one JSON
line per case, then a summary table. No assertions: numbers only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.app import OneLineArgumentParser
from birdflow.bench.reference import (
    like_for_like_config,
    make_reference_update,
    reference_costs,
)
from birdflow.data.bfdata import make_bfdata
from birdflow.data.weeks import week_dates
from birdflow.losses.objective import LossConfig, W2Config, init_loss_state, make_problem, objective
from birdflow.model.markov import WeekIndex, init_params
from birdflow.training.loop import make_optimizer, make_update
from birdflow.training.settings import OptimSettings

GRAD_MODES = ("implicit", "danskin", "unroll")
# W2 speed settings switched off one at a time ("plain" = all off, the solver before issue 5).
VARIANTS = {
    "plain": {"cache_target_self": False, "symmetric": False, "shared_cost": False, "week_batch": 0,
              "momentum": 1.0},
    "no-cache": {"cache_target_self": False},
    "no-symmetric": {"symmetric": False},
    "gathered-cost": {"shared_cost": False},
    "vmap-weeks": {"week_batch": 0},
    "scan-weeks": {"week_batch": 1},
    "cold": {"warm_start": False},
    "inner-5": {"inner_iterations": 5},
    "no-momentum": {"momentum": 1.0},
}
LIKE = "w2-danskin[reference-settings]"  # like-for-like with the reference
# Spec memory bandwidth (bytes/s) used for the L2 byte bound; others use a measured copy.
SPEC_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
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


def copy_bandwidth(n_bytes: int = 256 * 2**20) -> float:
    """Measured bytes/s of a large jnp elementwise copy (read + write counted)."""
    x = jnp.ones(n_bytes // 4, jnp.float32)
    f = jax.jit(lambda v: v * 1.0001)
    jax.block_until_ready(f(x))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / float(np.median(times))


def device_info() -> dict:
    """Device, versions, bandwidth assumption and load."""
    import ott

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    measured = copy_bandwidth()
    spec = next((v for k, v in SPEC_BANDWIDTH.items() if k in kind), None)
    return {"device": kind, "backend": jax.default_backend(), "jax": jax.__version__,
            "ott": ott.__version__, "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
            "copy_bandwidth_GBps": measured / 1e9,
            "bandwidth_GBps": (spec or measured) / 1e9,
            "bandwidth_source": "spec sheet" if spec else "measured jnp copy"}


def _memory(compiled) -> tuple[int | None, str]:
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "peak_bytes_in_use (process so far)"
    m = compiled.memory_analysis()
    if m is None:
        return None, "unavailable"
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    return int(total), "compiled temp+argument+output bytes"


def _run(update, state, args: tuple, warmup: int, repeats: int) -> dict:
    """Compile, warm up, then time ``repeats`` steps; keeps the state before the last step."""
    t0 = time.perf_counter()
    compiled = update.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    memory, memory_kind = _memory(compiled)
    for _ in range(warmup):
        state, terms, _ = compiled(state, *args)
    jax.block_until_ready(state)
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
    res = {"compile_s": compile_s, "step_ms": 1e3 * float(np.median(times)),
           "step_ms_min": 1e3 * min(times), "repeats": repeats, "warmup": warmup,
           "memory_bytes": memory, "memory_kind": memory_kind,
           "sinkhorn_iterations": float(np.median(iters)) if iters else None}
    res["terms"] = {k: float(v) for k, v in terms.items()}
    return res, before


def tight_w2(before: dict, problem, index: WeekIndex, cfg: LossConfig) -> dict:
    """W2 at the timed step's parameters from a tightly converged solve (same epsilon)."""
    tight_threshold = 1e-7 if jax.config.jax_enable_x64 else 1e-5  # float32 floor ~3e-6
    w2 = dataclasses.replace(cfg.w2, threshold=tight_threshold, max_iterations=20000,
                             cache_target_self=False, warm_start=True)
    tcfg = dataclasses.replace(cfg, w2=w2)
    f = jax.jit(lambda p, prob, s, k: objective(p, prob, index, tcfg, s, k)[1][0])
    terms = f(before["params"], problem, before["loss_state"], before["step"])
    return {"w2_tight": float(terms["w2"]), "tight_iterations": float(terms["sinkhorn_iterations"]),
            "tight_threshold": tight_threshold}


def grad_vs_danskin(before: dict, problem, index: WeekIndex, cfg: LossConfig) -> dict:
    """This case's gradient and the envelope (danskin) one at the same parameters and state.

    Returns ``grad_finite``, ``grad_rel_diff_vs_danskin`` (||g - g_danskin|| / ||g_danskin||,
    all parameters) and ``n_fallback`` (implicit week-solves that used the envelope gradient).
    """
    danskin = dataclasses.replace(cfg, w2=dataclasses.replace(cfg.w2, grad_mode="danskin"))
    grads, terms = {}, {}
    for key, c in (("case", cfg), ("danskin", danskin)):
        vg = jax.jit(jax.value_and_grad(
            lambda p, prob, s, k, c=c: objective(p, prob, index, c, s, k), has_aux=True))
        (_, (terms[key], _)), g = vg(before["params"], problem, before["loss_state"],
                                     before["step"])
        grads[key] = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
    diff = jnp.linalg.norm(grads["case"] - grads["danskin"]) / jnp.linalg.norm(grads["danskin"])
    return {"grad_finite": bool(jnp.isfinite(grads["case"]).all()),
            "grad_rel_diff_vs_danskin": float(diff),
            "n_fallback": float(terms["case"].get("n_fallback", 0.0))}


def run_case(name: str, ds, index: WeekIndex, w2cfg: W2Config | None, warmup: int,
             repeats: int, accuracy: bool = True) -> dict:
    """One benchmark case: ``w2cfg`` None = L2; name "reference" = the research-code W2."""
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
    res, before = _run(update, state, args, warmup, repeats)
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
    elif name == "reference":
        out["w2"] = res["terms"]["w2"]
    return out


def cases(selected: list[str], variants: list[str]) -> list[tuple[str, W2Config | None]]:
    """(name, W2 config) pairs; None = L2."""
    out: list[tuple[str, W2Config | None]] = []
    for c in selected:
        if c == "l2":
            out.append(("l2", None))
        elif c in GRAD_MODES:
            out.append((f"w2-{c}", W2Config(grad_mode=c)))
        elif c == "reference":
            out.append(("reference", None))
        elif c == "like":  # our solver at the reference's cost, epsilon and threshold
            out.append((LIKE, None))  # its W2Config depends on the data (see main)
        else:
            raise SystemExit(f"--cases: unknown case {c!r}; use l2, {', '.join(GRAD_MODES)}, "
                             "reference, like")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {v!r}; use {', '.join(VARIANTS)}")
        out.append((f"w2-danskin[{v}]", W2Config(**VARIANTS[v])))
    return out


def _add_ratios(rows: list[dict], info: dict) -> None:
    """W2/L2 and reference/ours step-time ratios, and the L2 step's byte bound."""
    l2 = next((r for r in rows if r["case"] == "l2"), None)
    ours = next((r for r in rows if r["case"] == "w2-danskin" and not r.get("error")), None)
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


def _table(rows: list[dict]) -> str:
    head = (f"{'n_max':>5} {'case':<34} {'compile s':>9} {'step ms':>9} {'x L2':>6} {'ref/ours':>8} "
            f"{'ref/like':>8} {'iters':>6} {'mem MB':>8} {'W2 rel err':>10} {'grad vs danskin':>15}")
    lines = [head, "-" * len(head)]

    def fmt(v, spec):
        ok = isinstance(v, int | float) and v == v
        return format(v, spec) if ok else "-".rjust(int(spec.split(".")[0]))

    for r in rows:
        if r.get("error"):
            lines.append(f"{r['n_max']:>5} {r['case']:<34} failed: {r['error'][:60]}")
            continue
        mem = r["memory_bytes"] / 2**20 if r.get("memory_bytes") else None
        gd = r.get("grad_rel_diff_vs_danskin")
        gd = ("non-finite" if not r.get("grad_finite", True) else f"{gd:.1e}") if gd is not None \
            else "-"
        lines.append(f"{r['n_max']:>5} {r['case']:<34} {fmt(r['compile_s'], '9.1f')} "
                     f"{fmt(r['step_ms'], '9.1f')} {fmt(r.get('ratio_vs_l2'), '6.2f')} "
                     f"{fmt(r.get('ref_over_ours'), '8.1f')} {fmt(r.get('ref_over_like'), '8.1f')} "
                     f"{fmt(r.get('sinkhorn_iterations'), '6.0f')} "
                     f"{fmt(mem, '8.0f')} {fmt(r.get('w2_rel_err'), '10.1e')} {gd:>15}")
        if "l2_byte_bound_ms" in r:
            lines.append(f"{'':>5} {'  (L2 byte bound)':<34} {'':>9} {r['l2_byte_bound_ms']:9.1f}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    on_cpu = jax.default_backend() == "cpu"
    ap = OneLineArgumentParser(prog="birdflow bench", description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[300, 1000] if on_cpu else [1000, 2000, 4000],
                    help="active cells per week (default: 300 1000 on CPU, 1000 2000 4000 on GPU)")
    ap.add_argument("--cases", default="l2,implicit,danskin,unroll,like,reference",
                    help="comma list of l2, implicit, danskin, unroll, like (our solver at the "
                         "reference's cost, epsilon and threshold), reference")
    ap.add_argument("--variants", default="", help=f"comma list of W2 variants: {', '.join(VARIANTS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per case (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed steps of the slow reference")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the tightly converged W2 solve")
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
        for name, w2cfg in todo:
            ref = name == "reference"
            if name == LIKE:
                w2cfg = like_for_like_config(ds["distance_km"].values, index)
            try:
                r = run_case(name, ds, index, w2cfg, warmup=1 if ref else a.warmup,
                             repeats=a.ref_repeats if ref else a.repeats, accuracy=not a.no_accuracy)
            except jax.errors.JaxRuntimeError as e:  # e.g. implicit mode's linear solve failing
                r = {"case": name, "n_max": index.n_max, "compile_s": None, "step_ms": None,
                     "error": next((ln.strip() for ln in str(e).splitlines() if "Error:" in ln
                                    and "Traceback" not in ln), str(e).splitlines()[0])[:300]}
            r["requested_cells"], r["load_avg_1min"] = n, os.getloadavg()[0]
            block.append(r)
        _add_ratios(block, info)
        for r in block:
            print(json.dumps(r), flush=True)
        rows += block
    print(f"\n{info['device']} ({info['backend']}), jax {info['jax']}, ott-jax {info['ott']}, "
          f"52 weeks; bandwidth {info['bandwidth_GBps']:.0f} GB/s ({info['bandwidth_source']})")
    print(_table(rows))
    return rows


if __name__ == "__main__":
    main()
