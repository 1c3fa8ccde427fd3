"""The machine a benchmark runs on: device, bandwidth, load, compiled memory."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# Spec memory bandwidth (bytes/s) used for the L2 byte bound; others use a measured copy.
SPEC_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


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
