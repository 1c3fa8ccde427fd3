"""A deliberately wrong chain: the true transitions spread twice as wide, for validation checks.

Validation must tell a model that knows where birds go from one that only roughly does. The
widened chain keeps each week's distribution and each row's direction but blurs every row by
a Gaussian kernel over next week's cells: ``P'_t = P_t K_{t+1}`` with
``K(j, k) ∝ exp(-d_jk² / 2σ_k²)``, ``σ_k = sqrt(factor² − 1) · σ_t`` and ``σ_t`` the root mean
(mass-weighted) variance of a row's weekly displacement, so the rows' spread grows from σ_t to
about ``factor · σ_t`` (variances add under convolution; the range's edges cut a little).
"""

from __future__ import annotations

import numpy as np

from birdflow.errors import ConfigError
from birdflow.model.fitted import BirdFlowModel


def displacement_sd_km(P: np.ndarray, weights: np.ndarray, x_to: np.ndarray,
                       y_to: np.ndarray) -> float:
    """Root of the ``weights``-averaged variance of each row's displacement (km): the
    variance of where a row sends its birds (its start is fixed).

    ``P`` is (n_from, n_to) row-stochastic, coordinates of the ``to`` cells in metres.
    """
    var = 0.0
    for c_to in (x_to, y_to):
        mean = P @ c_to
        var = var + P @ c_to**2 - mean**2
    return float(np.sqrt(max(weights @ var / weights.sum(), 0.0)) / 1e3)


def widen_transitions(model: BirdFlowModel, factor: float = 2.0) -> BirdFlowModel:
    """The chain with every transition's rows spread ``factor`` times as wide (module doc).

    Joints ``diag(μ_t) P'_t`` keep each week's distribution ``μ_t`` as their row sums.
    Dense models only (the synthetic truth is dense).
    """
    if model.sparse:
        raise ConfigError("widen_transitions: a dense model is needed (the synthetic flyway truth)")
    if factor < 1:
        raise ConfigError(f"factor={factor}: must be >= 1 (1 = the model itself)")
    idx, ds = model.index, model.data
    cx, cy = ds["cell_x"].values, ds["cell_y"].values
    M = np.zeros_like(np.asarray(model.marginals, dtype=np.float64))
    for t in range(model.n_transitions):
        sf, st = idx.slot_cell[t % idx.n_weeks], idx.slot_cell[(t + 1) % idx.n_weeks]
        fi, ti = np.flatnonzero(sf >= 0), np.flatnonzero(st >= 0)
        Mt = model.joint_dense_at(t)[np.ix_(fi, ti)]
        mu = Mt.sum(axis=1)
        P = np.divide(Mt, mu[:, None], out=np.zeros_like(Mt), where=mu[:, None] > 0)
        c_to = st[ti]
        sd = displacement_sd_km(P, mu, cx[c_to], cy[c_to])
        sigma_m = np.sqrt(factor**2 - 1.0) * max(sd, 1e-6) * 1e3
        d2 = (cx[c_to][:, None] - cx[c_to][None, :]) ** 2 + (cy[c_to][:, None] - cy[c_to][None, :]) ** 2
        K = np.exp(-d2 / (2 * sigma_m**2))
        K /= K.sum(axis=1, keepdims=True)
        M[t][np.ix_(fi, ti)] = mu[:, None] * (P @ K)
    hyper = {**model.hyperparameters, "widened": float(factor)}
    return BirdFlowModel(data=ds, index=idx, marginals=M, hyperparameters=hyper)
