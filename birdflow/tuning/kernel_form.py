"""The kernel form of the inner problem: one potential per cell and week instead of n² logits.

Every term of the BirdFlow objective except the entropy and the distance cost is a function
of the weekly marginals ``mu_t`` alone (the L2 or W2 location loss), the distance term is
linear in the joints, ``Σ_ij M_t(i,j) c_ij``, and the entropy term is
``Σ_t Σ_i mu_t(i) H(P_t(i,·))`` plus functions of the marginals. So with
``φ_{t+1}(j) = ∂(everything else)/∂mu_{t+1}(j)``, row i of transition t solves

    min_p  mu_t(i) [ Σ_j p_j (dist_weight c_ij + φ_{t+1}(j)) − ent_weight H(p) ],

whose solution is a Gibbs distribution. Every stationary point of the full problem therefore
has the form

    P_t(i, j) ∝ exp((g_t(j) − dist_weight c_ij) / ent_weight)

with one potential ``g_t(j)`` per cell of week t+1 (the joints are entropic transport plans
with the kernel of the distance cost). Fitting ``y = (z0, g)`` instead of the logits ``Z``
loses no stationary point and gains no false one: the gradient of ``g_t(j)`` is the column
sum ``Σ_i ∂L/∂Z_t(i,j)``, and ``Σ_j ψ_j · (that sum) = Σ_i mu_t(i) Var_{P_t(i,·)}(ψ)`` with
``ψ_j = φ_{t+1}(j) + g_t(j)``, so a stationary ``g`` makes every row's logit gradient vanish.
(:func:`birdflow.tuning.curvature.scaled_norm` of the full gradient at a kernel-form fit is
checked in ``tests/test_tuning_kernel_form.py``.)

Why it matters: in the logits, the transitions to far cells sit many units from their
optimum ``−dist_weight c / ent_weight`` where the loss behaves like ``exp(z)``, so Newton moves
them about one unit per step and the fit converges linearly; those directions are also the
near-null space that biases an implicit hypergradient. The kernel form has none of them, and
``T · n`` parameters instead of ``T · n²`` (about 10,000 instead of 2 million at 200 cells).

Starts and warm starts come from :meth:`KernelForm.bridge`: the potentials whose kernel-form
chain has given marginals (a Sinkhorn iteration per week). The first fit starts from the
chain that moves S&T week t to S&T week t+1 by the entropic plan (L2 = 0 at the start); a
refit at a new θ starts from the chain with the previous fit's marginals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from birdflow.losses import distance
from birdflow.model import markov
from birdflow.tuning import curvature
from birdflow.tuning.inner import Inner, weights

FLOOR_LOG = -700.0  # log of "no mass" (a week's empty slot); exp underflows to 0 in float64


@dataclass(frozen=True)
class KernelForm:
    """The inner problem in ``y = {"z0": (n_max,), "G": (T, n_max)}`` (see module doc).

    Has the interface the Newton fit and the hypergradients use (``value``, ``loss``,
    ``index``, ``mask``, ``diagonal``, ``logits``, ``warm``), like :class:`Inner` itself does
    for the logits.
    """

    inner: Inner
    bridge_tol: float = 1e-12  # Sinkhorn: largest L1 error of a week's column sums
    bridge_iters: int = 2000

    @property
    def index(self) -> markov.WeekIndex:
        return self.inner.index

    def _next_valid(self) -> np.ndarray:
        index = self.index
        t = np.arange(index.n_transitions)
        return np.asarray(index.valid, bool)[(t + 1) % index.n_weeks]

    @property
    def mask(self) -> dict:
        """Gauge: a week's potentials shift together; empty slots of week t+1 do not enter."""
        return {"z0": curvature.gauge_mask(self.index)["z0"],
                "G": jnp.asarray(self._next_valid(), float)}

    def _cost(self, theta) -> jax.Array:
        # as the objective repowers it: problem.dist_cost is built at the Inner's base dist_pow
        return distance.repowered_cost(self.inner.problem.dist_cost, self.inner.cfg.dist_pow,
                                       weights(theta)["dist_pow"])

    def _gather(self, G: jax.Array) -> jax.Array:
        """``G`` at each logit's destination: (T, 1, n_max) dense, (T, n_max, K) sparse."""
        nbr = self.index.nbr
        if nbr is None:
            return G[:, None, :]
        t = np.arange(self.index.n_transitions)[:, None, None]
        return G[t, np.maximum(nbr, 0)]

    def logits(self, y: dict, theta) -> dict:
        w = weights(theta)
        Z = (self._gather(y["G"]) - w["dist_weight"] * self._cost(theta)) / w["ent_weight"]
        return {"z0": y["z0"], "Z": Z}

    def value(self, y: dict, theta, state):
        return self.inner.value(self.logits(y, theta), theta, state)

    def loss(self, y: dict, theta, state):
        return self.value(y, theta, state)[0]

    @property
    def first_order(self) -> KernelForm:
        """This problem for gradients alone (:attr:`Inner.first_order`)."""
        first = self.inner.first_order
        return self if first is self.inner else replace(self, inner=first)

    def diagonal(self, y: dict, theta) -> dict:
        """The mass diagonal of ``g``: ``Σ_i M_t(i,j)(1 − P_t(i,j)) / ent_weight²``."""
        mu, M = markov.marginals(self.logits(y, theta), self.index)
        P = M / jnp.maximum(M.sum(-1, keepdims=True), jnp.finfo(M.dtype).tiny)
        col = self._column_sum(M * (1 - P))
        return {"z0": mu[0] * (1 - mu[0]), "G": col / weights(theta)["ent_weight"] ** 2}

    def _column_sum(self, X: jax.Array) -> jax.Array:
        nbr = self.index.nbr
        if nbr is None:
            return X.sum(1)
        t = np.broadcast_to(np.arange(self.index.n_transitions)[:, None, None], nbr.shape)
        X = jnp.where(nbr >= 0, X, 0.0)
        return jnp.zeros((self.index.n_transitions, self.index.n_max), X.dtype).at[
            t, np.maximum(nbr, 0)].add(X)

    def _column_logsumexp(self, X: jax.Array) -> jax.Array:
        nbr = self.index.nbr
        if nbr is None:
            return jax.scipy.special.logsumexp(X, axis=1)
        t = np.broadcast_to(np.arange(self.index.n_transitions)[:, None, None], nbr.shape)
        X = jnp.where(nbr >= 0, X, -jnp.inf)
        idx = (t, np.maximum(nbr, 0))
        top = jnp.full((self.index.n_transitions, self.index.n_max), -jnp.inf, X.dtype).at[
            idx].max(X)
        top = jnp.where(jnp.isfinite(top), top, 0.0)
        s = jnp.zeros_like(top).at[idx].add(jnp.exp(X - top[idx]))
        return top + jnp.log(jnp.maximum(s, jnp.finfo(X.dtype).tiny))

    def bridge(self, mu: jax.Array, theta) -> jax.Array:
        """Potentials ``g`` whose kernel-form joints carry ``mu[t]`` to ``mu[t + 1]``.

        ``mu``: (T + 1, n_max) weekly distributions in slot layout. Sinkhorn on the column
        scalings (the rows are normalised by the softmax), all weeks at once, until every
        week's column sums are within ``bridge_tol`` (L1) or ``bridge_iters``.
        """
        w = weights(theta)
        ew = w["ent_weight"]
        T = self.index.n_transitions
        valid = np.asarray(self.index.valid, bool)
        vf, vt = jnp.asarray(valid[np.arange(T)]), jnp.asarray(self._next_valid())
        logK = -w["dist_weight"] * self._cost(theta) / ew
        rows = vf[:, :, None] if self.index.nbr is None else (vf[:, :, None]
                                                              & (self.index.nbr >= 0))
        logK = jnp.where(rows & (vt[:, None, :] if self.index.nbr is None else True),
                         logK, -jnp.inf)
        tiny = jnp.finfo(mu.dtype).tiny
        lmu = jnp.where(mu > tiny, jnp.log(jnp.maximum(mu, tiny)), FLOOR_LOG)
        la, lnu = lmu[:-1], lmu[1:]

        def columns(lb):  # log of week t+1's column sums of the kernel-form joints
            X = logK + self._gather(lb)
            lrow = jax.scipy.special.logsumexp(X, axis=-1, keepdims=True)
            return self._column_logsumexp(jnp.where(rows, la[:, :, None] + X - lrow, -jnp.inf))

        def err(lb):
            return jnp.max(jnp.sum(jnp.where(vt, jnp.abs(jnp.exp(columns(lb)) - mu[1:]), 0.0),
                                   -1))

        def body(c):
            lb, k, _ = c
            lb = jnp.where(vt, lb + lnu - columns(lb), FLOOR_LOG)
            return lb, k + 1, err(lb)

        def cond(c):
            _, k, e = c
            return (k < self.bridge_iters) & (e > self.bridge_tol)

        lb0 = jnp.where(vt, lnu, FLOOR_LOG)
        lb, _, _ = jax.lax.while_loop(cond, body, (lb0, 0, err(lb0)))
        return ew * lb

    @cached_property
    def _start(self):
        def start(targets, z0, theta):
            tiny = jnp.finfo(targets.dtype).tiny
            return {"z0": z0, "G": self.bridge(
                targets / jnp.maximum(targets.sum(-1, keepdims=True), tiny), theta)}
        return jax.jit(start)

    @cached_property
    def _warm(self):
        def warm(y, theta_from, theta_to):
            mu, _ = markov.marginals(self.logits(y, theta_from), self.index)
            return {"z0": y["z0"], "G": self.bridge(mu, theta_to)}
        return jax.jit(warm)

    def start(self, targets: jax.Array, z0: jax.Array, theta) -> dict:
        """The chain that moves each week's ``targets`` to the next by the entropic plan."""
        return self._start(jnp.asarray(targets), jnp.asarray(z0), jnp.asarray(theta))

    def warm(self, y: dict, theta_from, theta_to) -> dict:
        """A start at ``theta_to`` with the marginals of the fit ``y`` at ``theta_from``."""
        return self._warm(y, jnp.asarray(theta_from), jnp.asarray(theta_to))
