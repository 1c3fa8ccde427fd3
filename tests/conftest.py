"""Shared test fixtures: tiny synthetic grids (fast on a 2-core CPU) and ../shared paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIRDFLOW_SHARED", REPO.parent / "shared"))


def shared_file(rel: str) -> Path:
    """Path of a file in ../shared/data; skip the test with a reason when it is absent."""
    path = SHARED / "data" / rel
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is only on the development/CI machines)")
    return path


@pytest.fixture
def amewoo_tif() -> Path:
    return shared_file("ebirdst/amewoo_2019_100km.tif")


@pytest.fixture
def sstspa_hdf5() -> Path:
    return shared_file("birdflowr/sstspa_model.hdf5")


def make_tiny_bfdata(n_rows: int = 4, n_cols: int = 5, n_weeks: int = 52, seed: int = 0,
                     zero_frac: float = 0.2):
    """A small BirdFlowData with random abundance and some cells masked per week."""
    from birdflow.data.bfdata import make_bfdata
    from birdflow.data.weeks import week_dates

    rng = np.random.default_rng(seed)
    a = rng.random((n_weeks, n_rows, n_cols))
    a[rng.random(a.shape) < zero_frac] = 0.0
    a[:, 0, 0] = np.nan  # one no-data pixel outside the static mask
    x = np.arange(n_cols) * 1e5 + 5e4
    y = 3.5e6 - np.arange(n_rows) * 1e5
    return make_bfdata(a, x, y, "ESRI:102008", np.arange(1, n_weeks + 1),
                       week_dates(2022)[:n_weeks], species_code="tiny", version_year=2022,
                       res_km=100.0, source="tiny")


@pytest.fixture
def tiny_bfdata():
    return make_tiny_bfdata()


def run_command(main, args: list[str]) -> int:
    """Call a command's ``main(args)`` in-process; returns its exit status (0 when it returns)."""
    try:
        main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def independence_model(ds):
    """A consistent chain on ``ds`` with joints M_t = outer(distr_t, distr_{t+1}).

    Row sums are the S&T week t, column sums the S&T week t + 1, so every one-way marginal
    equals the S&T distribution; a quick stand-in for a fitted model (no training).
    """
    from birdflow.model.fitted import BirdFlowModel
    from birdflow.model.markov import WeekIndex

    index = WeekIndex.from_bfdata(ds)
    slots = index.slot_values(ds["distr"].values)
    M = np.stack([np.outer(slots[t], slots[(t + 1) % index.n_weeks])
                  for t in range(index.n_transitions)])
    return BirdFlowModel(data=ds, index=index, marginals=M,
                         hyperparameters={"obs_weight": 1.0, "ent_weight": 1e-3,
                                          "dist_weight": 1e-2, "dist_pow": 0.4})


def w2_objective_steps(ds, index, w2cfg, steps, params=None):
    """Call the W2 objective (float64, jitted) at each training step of ``steps``, carrying the
    loss state; returns the last call's terms (floats), gradient (a pytree) and loss state."""
    import jax
    import jax.numpy as jnp

    from birdflow.losses import LossConfig, init_loss_state, make_problem, objective
    from birdflow.model.markov import init_params

    cfg = LossConfig(location="w2", w2=w2cfg)
    with jax.enable_x64(True):
        problem = make_problem(ds, index, cfg)
        if params is None:
            params = init_params(jax.random.key(1), index, dtype=jnp.float64)
        vg = jax.jit(jax.value_and_grad(
            lambda p, prob, s, k: objective(p, prob, index, cfg, s, k), has_aux=True))
        state = init_loss_state(problem, index, cfg)
        for k in steps:
            (_, (terms, state)), g = vg(params, problem, state, jnp.int32(k))
    return {k: float(v) for k, v in terms.items()}, g, state
