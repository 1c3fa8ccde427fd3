"""The inner problem: the BirdFlow objective as a function of logits and hyperparameters.

``θ = (log dist_weight, log ent_weight, dist_pow, log w2_scale)`` (obs_weight stays as
configured); :func:`weights` turns it into the traced weights
:func:`birdflow.losses.objective.objective` accepts. :func:`fit` minimises over the logits
until a stationarity criterion holds (not a fixed step count): the implicit function theorem
behind the hypergradient holds only at a stationary point, so the fit reports how close it got.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr

from birdflow.losses.objective import LossConfig, init_loss_state, make_problem, objective
from birdflow.model import markov
from birdflow.model.markov import st_init  # noqa: F401  (re-exported: tuning starts from it)

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


def tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree)))


@dataclass(frozen=True)
class FitSettings:
    """Inner-fit settings (``tune.inner`` in the config).

    Attributes:
        solver: "lbfgs" (optax L-BFGS with zoom line search; stateless losses, i.e. L2) or
            "adam" (the training update; needed for W2, whose loss carries warm-start state).
        gtol: stop when the logit gradient's 2-norm is at most this.
        rtol: also stop when the loss changed by less than ``rtol`` (relative) over a check.
        max_steps: at most this many inner steps per fit.
        check_every: steps run in one jitted chunk between convergence checks.
        learning_rate: Adam's step size.
    """

    solver: str = "lbfgs"
    gtol: float = 1e-4
    rtol: float = 0.0
    max_steps: int = 2000
    check_every: int = 25
    learning_rate: float = 0.05


@dataclass
class FitResult:
    params: dict
    state: Any
    steps: int
    grad_norm: float
    loss: float
    converged: bool


def make_fitter(inner: Inner, settings: FitSettings):
    """A function ``(params, theta, state) -> FitResult`` running the configured solver."""
    if settings.solver == "lbfgs":
        opt = optax.lbfgs()
    else:
        opt = optax.adam(settings.learning_rate)

    def chunk(carry, theta):
        def body(c, _):
            params, opt_state, state = c
            if settings.solver == "lbfgs":
                fn = lambda p: inner.loss(p, theta, state)  # noqa: E731
                value, grad = optax.value_and_grad_from_state(fn)(params, state=opt_state)
                updates, opt_state = opt.update(grad, opt_state, params, value=value, grad=grad,
                                                value_fn=fn)
                new_state = state
            else:
                (value, (_, new_state)), grad = jax.value_and_grad(inner.value, has_aux=True)(
                    params, theta, state)
                updates, opt_state = opt.update(grad, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, new_state), value

        carry, values = jax.lax.scan(body, carry, None, length=settings.check_every)
        params, _, state = carry
        (value, _), grad = jax.value_and_grad(inner.value, has_aux=True)(params, theta, state)
        return carry, value, tree_norm(grad), values[0]

    chunk = jax.jit(chunk)

    def fit(params, theta, state, max_steps: int | None = None) -> FitResult:
        max_steps = settings.max_steps if max_steps is None else max_steps
        carry = (params, opt.init(params), state)
        steps, gnorm, value, rel = 0, float("inf"), float("nan"), float("inf")
        while steps < max_steps:
            carry, value, gnorm, first = jax.device_get(chunk(carry, theta))
            steps += settings.check_every
            if not np.isfinite(value) or not np.isfinite(gnorm):
                break
            rel = abs(first - value) / max(abs(value), 1e-30)
            if gnorm <= settings.gtol or (settings.rtol > 0 and rel <= settings.rtol):
                break
        ok = bool(np.isfinite(value) and (gnorm <= settings.gtol or rel <= settings.rtol))
        return FitResult(carry[0], carry[2], steps, float(gnorm), float(value), ok)

    return fit
