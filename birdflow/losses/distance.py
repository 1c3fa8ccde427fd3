"""Distance (energy) term: expected flight cost ``sum_t <M_t, (d_km / 100)^dist_pow>``.

The cost of moving from week t's slot i to week t+1's slot j is the great-circle distance
between the two cell centres in units of 100 km, raised to ``dist_pow`` (BirdFlowPy's
"normalized" cost). Padding rows/columns get cost 0 (they carry no mass anyway).

Sparse (neighbourhood) models get the cost at their kept pairs only, (n_transitions, n_max, K)
gathered from the cell coordinates (:func:`sparse_transition_cost`), never from an
(n_cells, n_cells) matrix; :func:`distance_per_transition` and :func:`repowered_cost` work
on either layout.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from birdflow.data.grid import great_circle_km
from birdflow.model.markov import WeekIndex
from birdflow.types import Marginals

PerTransition = Float[Array, "transition"]  # one value per transition

DISTANCE_UNIT_KM = 100.0  # BirdFlowPy divides km by 100 before the power


def transition_cost(distance_km: np.ndarray, index: WeekIndex, dist_pow: float) -> np.ndarray:
    """Per-transition cost matrices in slot layout.

    Args:
        distance_km: (n_cells, n_cells) great-circle distances between active cells, km.
        index: slot layout; transition t goes from week t to week (t + 1) mod n_weeks.
        dist_pow: exponent applied to ``d_km / 100``.

    Returns:
        (n_transitions, n_max, n_max) float64 ``(d / 100)^dist_pow`` from week-t slots (rows)
        to week-(t+1) slots (columns); 0 wherever either slot is padding.
    """
    dist = np.asarray(distance_km, dtype=np.float64)
    cost_cells = (dist / DISTANCE_UNIT_KM) ** float(dist_pow)
    t = np.arange(index.n_transitions)
    frm, to = index.slot_cell[t], index.slot_cell[(t + 1) % index.n_weeks]
    cost = cost_cells[np.maximum(frm, 0)[:, :, None], np.maximum(to, 0)[:, None, :]]
    ok = (frm >= 0)[:, :, None] & (to >= 0)[:, None, :]
    return np.where(ok, cost, 0.0)


def sparse_transition_cost(lon: np.ndarray, lat: np.ndarray, index: WeekIndex,
                           dist_pow: float, dtype=np.float64) -> np.ndarray:
    """Per-transition costs on the sparse layout (``index.nbr``).

    Args:
        lon, lat: (n_cells,) cell centres in degrees.
        index: sparse slot layout; ``nbr[t, i, k]`` is a week-(t+1) slot.
        dist_pow: exponent applied to ``d_km / 100``.
        dtype: of the result (float32 halves the host memory of large models).

    Returns:
        (n_transitions, n_max, K) ``(d / 100)^dist_pow`` from week-t slot i to its k-th
        neighbour; 0 at padding entries.
    """
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    out = np.zeros(index.nbr.shape, dtype)
    for t in range(index.n_transitions):  # a week at a time: no (T, n_max, K) float64 temporaries
        nbr, frm = index.nbr[t], index.slot_cell[t]  # (n_max, K) week-(t+1) slots, (n_max,) cells
        to = index.slot_cell[(t + 1) % index.n_weeks][np.maximum(nbr, 0)]  # (n_max, K) cells
        src = np.maximum(frm, 0)[:, None]
        d = great_circle_km(lon[src], lat[src], lon[to], lat[to])
        ok = (nbr >= 0) & (frm >= 0)[:, None]
        out[t] = np.where(ok, (d / DISTANCE_UNIT_KM) ** float(dist_pow), 0.0)
    return out


def distance_per_transition(
    M: Marginals, cost: Marginals
) -> PerTransition:
    """Expected cost ``<M_t, C_t>`` of each transition (units of (100 km)^dist_pow).

    ``M`` and ``cost`` are both dense (T, n_max, n_max) or both sparse (T, n_max, K).
    """
    return (M * cost).sum(axis=(-2, -1))


def repowered_cost(cost: Marginals, dist_pow: float, new_pow) -> Marginals:
    """``(d / 100)^new_pow`` from ``cost = (d / 100)^dist_pow``, differentiable in ``new_pow``.

    Computed as ``exp(new_pow / dist_pow * log cost)``; zero costs (zero distance, padding) stay
    0 with a zero gradient (the logarithm only sees positive entries).
    """
    positive = cost > 0
    log_cost = jnp.log(jnp.where(positive, cost, 1.0))
    return jnp.where(positive, jnp.exp(new_pow / dist_pow * log_cost), 0.0)
