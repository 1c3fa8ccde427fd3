"""Choose the grid resolution from a parameter budget (BirdFlowR's ``determine_resolution``).

The model fits ``n_params = n_1 + sum_t n_t n_{t+1}`` softmax logits (cyclic; a sparse model
with ``model.neighbourhood_km`` set: n_1 + the pairs of consecutive weeks' cells within the
radius, :func:`count_parameters`), which must fit
in GPU memory: ``max_params = 23,224,801 x gpu_ram_gb`` unless given. We want the finest *clean*
resolution (reference §1.4 step 5) whose real parameter count is within the budget, ideally in
(90 %, 100 %] of it. Instead of BirdFlowR's area-based prediction we bisect over the ladder of
clean resolutions with real recounts: the count falls as cells grow, so the search needs about
log2(400) ~ 9 recounts and cannot oscillate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np

from birdflow.data.bfdata import n_parameters
from birdflow.data.grid import to_lonlat
from birdflow.data.reach import resolve_radius_km, sparse_n_parameters
from birdflow.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PARAMS_PER_GB = 23_224_801  # BirdFlowR option birdflow_options("max_param_per_gpu_gb")
MIN_RES_KM = 3.0  # BirdFlowR refuses res < 3 km
MAX_RES_KM = 1000.0
# (upper end of the range in km, step in km) of BirdFlowR's clean-number rounding
_STEPS = ((2.5, 0.1), (5.0, 0.5), (300.0, 1.0), (600.0, 5.0), (math.inf, 10.0))


def max_params_for(species: Mapping) -> int:
    """``species.max_params`` if set, else 23,224,801 x ``species.gpu_ram_gb`` (default 12)."""
    if species.get("max_params") is not None:
        value = int(species["max_params"])
    else:
        value = int(MAX_PARAMS_PER_GB * float(species.get("gpu_ram_gb") or 12))
    if value <= 0:
        raise ConfigError(f"species.max_params/gpu_ram_gb give a budget of {value} parameters; "
                          "set a positive max_params or gpu_ram_gb")
    return value


def count_parameters(active: np.ndarray, x: np.ndarray, y: np.ndarray, crs, res_km: float,
                     neighbourhood_km=None, species: Mapping | None = None) -> int:
    """Parameters of a model on a regridded cube: dense, or sparse within a radius.

    Args:
        active: (n_weeks, nrow, ncol) bool, cells with S&T mass per week (all 52 weeks: cyclic).
        x, y: (ncol,), (nrow,) cell-centre coordinates in metres of ``crs``.
        crs: the grid's CRS.
        res_km: the grid's resolution (for ``neighbourhood_km=auto``).
        neighbourhood_km: None (dense: n_1 + sum n_t n_{t+1}), a radius in km, or ``auto``
            (:func:`birdflow.data.reach.resolve_radius_km` with ``species``).
        species: the species config (``max_weekly_km``) for ``auto``.
    """
    active = np.asarray(active, bool)
    flat = active.reshape(active.shape[0], -1)
    radius = resolve_radius_km(neighbourhood_km, res_km, species or {})
    if radius is None:
        return n_parameters(flat)
    rows, cols = np.nonzero(active.any(axis=0))
    lon, lat = to_lonlat(np.asarray(x, float)[cols], np.asarray(y, float)[rows], crs)
    return sparse_n_parameters(active[:, rows, cols], lon, lat, radius)


def _step(res_km: float) -> float:
    return next(step for upper, step in _STEPS if res_km < upper)


def clean_resolution(res_km: float) -> float:
    """Round up to a clean number: 0.1 km steps below 2.5, 0.5 to 5, 1 to 300, 5 to 600, then 10."""
    step = _step(res_km)
    return round(math.ceil(res_km / step - 1e-9) * step, 1)


def clean_ladder(lo_km: float, hi_km: float = MAX_RES_KM) -> np.ndarray:
    """All clean resolutions from ``clean_resolution(lo_km)`` up to ``hi_km`` (ascending)."""
    values = [clean_resolution(lo_km)]
    while values[-1] < hi_km:
        values.append(round(values[-1] + _step(values[-1]), 1))
    return np.array(values)


def choose_resolution(count_params: Callable[[float], int], max_params: int,
                      lo_km: float = MIN_RES_KM, hi_km: float = MAX_RES_KM) -> tuple[float, int]:
    """Finest clean resolution in [lo_km, hi_km] whose recounted parameters fit ``max_params``.

    Args:
        count_params: res_km -> real parameter count of the data regridded to that resolution.
        max_params: the budget.
        lo_km, hi_km: search range (lo is raised to 3 km; use the source resolution).

    Returns:
        (res_km, n_params) at the chosen resolution.
    """
    ladder = clean_ladder(max(lo_km, MIN_RES_KM), hi_km)
    counts: dict[int, int] = {}

    def count(i: int) -> int:
        if i not in counts:
            counts[i] = int(count_params(float(ladder[i])))
            log.debug("res %g km -> %d parameters", ladder[i], counts[i])
        return counts[i]

    hi = len(ladder) - 1
    if count(hi) > max_params:
        raise ConfigError(f"even {ladder[hi]:g} km cells need {count(hi):,} parameters, more than "
                          f"max_params={max_params:,}; raise species.max_params or gpu_ram_gb, or "
                          "clip/truncate the species")
    lo = 0
    if count(lo) <= max_params:
        hi = lo
    while hi - lo > 1:  # invariant: count(lo) > max_params >= count(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) > max_params else (lo, mid)
    res, n = float(ladder[hi]), count(hi)
    share = 100.0 * n / max_params
    log.info("resolution from the parameter budget: %g km, %d parameters = %.1f%% of max_params "
             "%d (%d recounts)", res, n, share, max_params, len(counts))
    if share <= 90.0:
        log.warning("%g km uses only %.1f%% of max_params (target 90-100%%): the next finer clean "
                    "resolution exceeds the budget or the source is too coarse", res, share)
    return res, n
