"""Scatter-add vs gather for the sparse marginals (forward + gradient), one line per variant.

``python -m birdflow.bench.sparse_push [--cells N] [--neighbours K] [--repeats R]`` times the
jitted value and gradient of ``sum_t |mu_t|^2`` through the sparse chain on random
neighbourhoods (52 transitions, float32), with ``mu_{t+1}`` formed either by a scatter-add of
the joint onto the next week's slots (:func:`birdflow.model.sparse.push`, what the model uses)
or by a gather through a precomputed in-neighbour table. Prints the median of ``repeats``
timed calls after one compiling call, and the gather/scatter ratio.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.model import sparse

N_TRANSITIONS = 52


def in_table(nbr: np.ndarray) -> np.ndarray:
    """(T, n, D) flat (i * K + k) indices of the entries arriving at each slot, -1 padding."""
    T, n, _ = nbr.shape
    flat = nbr.reshape(T, -1)
    deg = max(int(np.bincount(flat[t], minlength=n).max()) for t in range(T))
    inn = np.full((T, n, deg), -1, np.int32)
    for t in range(T):
        order = np.argsort(flat[t], kind="stable")
        tgt = flat[t][order]
        pos = np.arange(len(tgt)) - np.searchsorted(tgt, np.arange(n))[tgt]
        inn[t, tgt, pos] = order
    return inn


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m birdflow.bench.sparse_push")
    ap.add_argument("--cells", type=int, default=1000, help="slots per week")
    ap.add_argument("--neighbours", type=int, default=120, help="neighbours per row (K)")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    n, K = a.cells, a.neighbours
    rng = np.random.default_rng(0)
    nbr = np.sort(np.stack([np.stack([rng.choice(n, K, replace=False) for _ in range(n)])
                            for _ in range(N_TRANSITIONS)]), -1).astype(np.int32)
    inn = jnp.asarray(in_table(nbr))
    Z = jnp.asarray(rng.standard_normal(nbr.shape), jnp.float32)
    mu0 = jnp.full((n,), 1.0 / n, jnp.float32)

    def gather(P):
        def step(mu, xs):
            P_t, in_t = xs
            flat = (mu[:, None] * P_t).ravel()
            nxt = jnp.where(in_t >= 0, flat[jnp.maximum(in_t, 0)], 0.0).sum(-1)
            return nxt, nxt
        return jax.lax.scan(step, mu0, (P, inn))[1]

    def scatter(P):
        return sparse.marginals(mu0, P, nbr)[0][1:]

    times = {}
    for name, push in (("scatter", scatter), ("gather", gather)):
        f = jax.jit(jax.value_and_grad(lambda z, push=push: (push(sparse.transitions(z, nbr)) ** 2).sum()))
        jax.block_until_ready(f(Z))
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(Z))
            ts.append(time.perf_counter() - t0)
        times[name] = float(np.median(ts))
        print(f"{name:8s} n={n} K={K}: {1e3 * times[name]:.1f} ms per value+gradient")
    print(f"gather / scatter = {times['gather'] / times['scatter']:.2f}")


if __name__ == "__main__":
    main()
