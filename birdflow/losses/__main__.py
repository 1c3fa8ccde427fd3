"""Benchmark: ``python -m birdflow.losses [--cells 100] [--repeats 5]``.

Times one jitted ``value_and_grad`` of the objective (L2, and W2 with each gradient mode,
warm-started as in training) on a random 52-week cyclic problem and prints milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.data.bfdata import make_bfdata
from birdflow.data.weeks import week_dates
from birdflow.losses.objective import LossConfig, W2Config, init_loss_state, make_problem, objective
from birdflow.model.markov import WeekIndex, init_params


def _dataset(n_cells: int, seed: int = 0):
    side = int(np.ceil(np.sqrt(n_cells)))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    weeks = np.arange(52)
    centre = side / 2 + side / 4 * np.sin(2 * np.pi * weeks / 52)  # a north-south migration
    cube = np.exp(-((yy[None] - centre[:, None, None]) ** 2 + (xx[None] - side / 2) ** 2) / side)
    cube *= rng.random(cube.shape) > 0.2  # ~20 % of cells outside each week's mask
    x, y = np.arange(side) * 1e5 + 5e4, 4e6 - np.arange(side) * 1e5
    return make_bfdata(cube, x, y, "ESRI:102008", weeks + 1, week_dates(2022),
                       species_code="bench", version_year=2022, res_km=100.0, source="bench")


def _time(cfg: LossConfig, ds, index, repeats: int) -> tuple[float, dict]:
    problem = make_problem(ds, index, cfg)
    params = init_params(jax.random.key(0), index)
    vg = jax.jit(jax.value_and_grad(
        lambda p, prob, s, k: objective(p, prob, index, cfg, s, k), has_aux=True))

    def step(p, s, k):
        return vg(p, problem, s, k)

    state = init_loss_state(problem, index, cfg)
    (_, (terms, state)), g = step(params, state, jnp.int32(0))  # compile + cold start
    jax.block_until_ready(g)
    times = []
    for k in range(repeats):
        params = jax.tree.map(lambda p, d: p - 0.1 * d, params, g)  # a plain gradient step
        t0 = time.perf_counter()
        (_, (terms, state)), g = step(params, state, jnp.int32(k + 1))
        jax.block_until_ready(g)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), {k: float(v) for k, v in terms.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100, help="active cells (~n_max / 0.85)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    ds = _dataset(a.cells)
    index = WeekIndex.from_bfdata(ds)
    print(f"52 weeks, {ds.sizes['cell']} cells, n_max {index.n_max}, device {jax.devices()[0]}")
    runs = [("l2", LossConfig())]
    for mode in ("implicit", "danskin", "unroll"):
        runs.append((f"w2 {mode}", LossConfig(location="w2", w2=W2Config(grad_mode=mode))))
    runs.append(("w2 implicit debiased", LossConfig(
        location="w2", w2=dataclasses.replace(W2Config(), debiased=True))))
    for name, cfg in runs:
        ms, terms = _time(cfg, ds, index, a.repeats)
        extra = f", sinkhorn iterations {terms['sinkhorn_iterations']:.0f}" if "w2" in terms else ""
        print(f"{name:22s} value_and_grad {ms:9.2f} ms (median of {a.repeats}, warm){extra}")


if __name__ == "__main__":
    main()
