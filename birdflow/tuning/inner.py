"""The inner problem: the BirdFlow objective as a function of logits and hyperparameters.

``θ = (log dist_weight, log ent_weight, dist_pow, log w2_scale)`` (obs_weight stays as
configured); :func:`weights` turns it into the traced weights
:func:`birdflow.losses.objective.objective` accepts. The fit to a stationary point is
:mod:`birdflow.tuning.newton`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from birdflow.losses.objective import LossConfig, init_loss_state, make_problem, objective
from birdflow.model import markov
from birdflow.model.markov import st_init  # noqa: F401  (re-exported: tuning starts from it)
from birdflow.tuning import curvature

THETA_NAMES = ("log_dist_weight", "log_ent_weight", "dist_pow", "log_w2_scale")
FINAL_STEP = 2**30  # the objective's step argument: any epsilon schedule has ended


def theta_from_config(cfg: LossConfig) -> np.ndarray:
    """(4,) θ of a loss config (``w2.scale`` is 1 for L2, unused)."""
    return np.array([np.log(cfg.dist_weight), np.log(cfg.ent_weight), cfg.dist_pow,
                     np.log(cfg.w2.scale)])


def config_from_theta(cfg: LossConfig, theta) -> LossConfig:
    """The loss config with θ's weights written in (for the final run dir)."""
    t = [float(x) for x in np.asarray(theta)]
    return replace(cfg, dist_weight=float(np.exp(t[0])), ent_weight=float(np.exp(t[1])),
                   dist_pow=t[2], w2=replace(cfg.w2, scale=float(np.exp(t[3]))))


def weights(theta: jax.Array) -> dict:
    """Traced objective weights of θ (see module doc)."""
    return {"dist_weight": jnp.exp(theta[0]), "ent_weight": jnp.exp(theta[1]),
            "dist_pow": theta[2], "w2_scale": jnp.exp(theta[3])}


@dataclass(frozen=True)
class Inner:
    """Everything the inner objective needs besides logits and θ.

    ``problem.dist_cost`` is built with ``dist_pow = 1`` (plain d / 100 km) and re-powered by θ.
    """

    index: markov.WeekIndex
    cfg: LossConfig
    problem: Any

    @classmethod
    def build(cls, ds: xr.Dataset, cfg: LossConfig, dtype=jnp.float32,
              index: markov.WeekIndex | None = None) -> Inner:
        """``index``: the slot layout (dense or sparse); None = dense from ``ds``."""
        index = markov.WeekIndex.from_bfdata(ds) if index is None else index
        base = replace(cfg, dist_pow=1.0)
        problem = make_problem(ds, index, base)
        problem = jax.tree_util.tree_map(  # floats to dtype; integer tables (boxes) stay
            lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
            else jnp.asarray(a), problem)
        return cls(index, base, problem)

    def init_state(self) -> Any:
        return init_loss_state(self.problem, self.index, self.cfg)

    def value(self, params: dict, theta: jax.Array, state: Any) -> tuple[jax.Array, tuple]:
        """L_in(params, θ) and (terms, new loss state)."""
        return objective(params, self.problem, self.index, self.cfg, state, FINAL_STEP,
                         weights(theta))

    def loss(self, params: dict, theta: jax.Array, state: Any) -> jax.Array:
        return self.value(params, theta, state)[0]

    @property
    def first_order(self) -> Inner:
        """This problem for gradients alone: W2's implicit derivatives solved by CG. The
        ``direct`` solve inverts each week's system once per plan, which pays off only over
        the many Hessian-vector products taken at one point (at 205 cells, one core: a
        gradient 0.64 s with CG, 1.31 s direct). The value and its gradient are the same up to
        the solves' tolerances."""
        w2 = self.cfg.w2
        if self.cfg.location != "w2" or w2.linear_solve == "cg":
            return self
        return replace(self, cfg=replace(self.cfg, w2=replace(w2, linear_solve="cg")))

    # The fit space's interface (shared with :class:`birdflow.tuning.kernel_form.KernelForm`):
    # here the parameters are the logits themselves.
    @property
    def mask(self) -> dict:
        return curvature.gauge_mask(self.index)

    def diagonal(self, params: dict, theta) -> dict:
        return curvature.mass_diagonal(params, self.index)

    def logits(self, params: dict, theta) -> dict:
        return params

    def warm(self, params: dict, theta_from, theta_to) -> dict:
        return params
