"""The memory a training run needs, estimated before anything is allocated.

Training holds, per transition, the logits, their gradient, Adam's two moments, the joints
``M`` and the softmax temporaries of the forward and backward pass: about
:data:`ARRAYS_PER_LOGIT` arrays the size of the logits ``(n_transitions, n_max, n_max)``
(dense) or ``(n_transitions, n_max, K)`` (neighbourhood-sparse). A run that would not fit in
the memory the device has free stops in one line before it starts, with a resolution and a
sparse layout that fit, instead of growing until the kernel kills it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import jax
import numpy as np

from birdflow.data.reach import resolve_radius_km
from birdflow.data.resolution import clean_resolution
from birdflow.errors import ConfigError
from birdflow.model.markov import WeekIndex

ARRAYS_PER_LOGIT = 8


def available_bytes() -> tuple[int, str]:
    """(bytes free, what they are) on the default JAX device: its memory limit less what is
    in use on an accelerator, the available system memory on the CPU."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if stats.get("bytes_limit"):
            free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            return free, f"free memory on the {dev.device_kind}"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available system memory"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free system memory"


def training_bytes(n_transitions: int, n_max: int, per_row: int, itemsize: int) -> int:
    """Bytes of the arrays training keeps for ``(n_transitions, n_max, per_row)`` logits."""
    return ARRAYS_PER_LOGIT * itemsize * n_transitions * n_max * per_row


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"


def check_memory(index: WeekIndex, res_km: float, species: Mapping, itemsize: int,
                 have: tuple[int, str] | None = None) -> int:
    """Stop when training on ``index`` would not fit; returns the estimate in bytes.

    Raises:
        ConfigError: the estimate exceeds the memory available, naming both, the finest clean
            resolution that fits and what a neighbourhood-sparse model would need.
    """
    per_row = index.nbr.shape[-1] if index.sparse else index.n_max
    need = training_bytes(index.n_transitions, index.n_max, per_row, itemsize)
    free, what = have or available_bytes()
    if need <= free:
        return need
    # cells per week grow as res^-2, so dense memory as res^-4 (sparse: res^-4 as well, at a
    # fixed radius in km the neighbours per cell grow as res^-2)
    fits_km = clean_resolution(res_km * (need / free) ** 0.25 * 1.02)
    shape = (f"{index.n_transitions} x {index.n_max:,} x {per_row:,} "
             f"{'sparse' if index.sparse else 'dense'} logits")
    advice = [f"species.res_km={fits_km:g} or coarser"]
    radius = resolve_radius_km("auto", res_km, species)
    if not index.sparse and radius is not None:
        k = min(index.n_max, math.ceil(np.pi * (radius / res_km) ** 2))
        sparse = training_bytes(index.n_transitions, index.n_max, k, itemsize)
        if sparse <= free:
            advice.append(f"model.neighbourhood_km=auto (a {radius:g} km radius, about "
                          f"{_gb(sparse)})")
        else:  # the largest radius whose neighbours fit; shorter than the species' weekly range
            k_fit = free // training_bytes(index.n_transitions, index.n_max, 1, itemsize)
            r_fit = math.floor(res_km * math.sqrt(k_fit / np.pi))
            if r_fit >= res_km:
                advice.append(f"model.neighbourhood_km={r_fit} at this resolution (auto's "
                              f"{radius:g} km would need {_gb(sparse)})")
            else:
                advice[0] += (" (sparse transitions, model.neighbourhood_km, do not fit at "
                              "this resolution either)")
    raise ConfigError(
        f"species.res_km={res_km:g}: training would need about {_gb(need)} ({shape}, x"
        f"{ARRAYS_PER_LOGIT} for gradient, Adam and joints) but {_gb(free)} is the {what}; use "
        + " or ".join(advice) + "; species.res_km=null picks a resolution from the parameter "
        "budget (species.gpu_ram_gb)")
