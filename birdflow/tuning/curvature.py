"""Curvature of the inner objective in the logits: gauge, scale, Hessian-vector products, CG.

The Newton inner fit (:mod:`birdflow.tuning.newton`) and the implicit hypergradient
(:mod:`birdflow.tuning.hypergrad`) solve the same kind of system, ``(H + λD) x = b`` with H the
logit Hessian of ``L_in``, so they share everything here:

- **The shift gauge.** Adding a constant to a row of logits changes nothing (softmax), and
  padding logits do not enter, so H is singular along those directions. Right-hand sides and
  every CG iterate are projected onto rows of zero mean over their real slots
  (:func:`project_gauge`); gradients are orthogonal to the gauge, so nothing is lost.
- **The scale.** Row i of transition t enters every term through the mass ``mu_t(i)`` it
  carries, so its curvature is ``mu_t(i)`` times the softmax curvature ``diag(p) − pp^T``:
  rows with little mass have tiny eigenvalues although they are perfectly determined.
  :func:`mass_diagonal` ``D = mu_t(i) P(1 − P)`` is the CG preconditioner, and damping is
  *relative to it* (``λD``, not ``λI``): a damping in absolute units swamps every row whose
  mass is below it (with 200 cells a week, most rows carry ``mu P (1 − P)`` ≈ 1e-5), which
  shrinks those rows' share of the solution and can flip the sign of a hypergradient.
- **Preconditioned CG** with a negative-curvature test (:func:`pcg`), on flat vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from birdflow.model import markov

DIAG_FLOOR = 1e-12  # relative to max(D): logits of destinations with P ~ 0 are flat, not free


def gauge_mask(index: markov.WeekIndex) -> dict:
    """{"z0": (n_max,), "Z": like the logits} 1 where a logit is real, 0 in padding.

    ``Z`` is (T, n_max, n_max), or (T, n_max, K) on the sparse layout (real: ``nbr >= 0``).
    """
    valid = np.asarray(index.valid, float)
    t = np.arange(index.n_transitions)
    if index.nbr is not None:  # padding rows of nbr are all -1
        Z = (index.nbr >= 0).astype(float)
    else:
        Z = valid[t][:, :, None] * valid[(t + 1) % index.n_weeks][:, None, :]
    return {"z0": jnp.asarray(valid[0]), "Z": jnp.asarray(Z)}


def mass_diagonal(params: dict, index: markov.WeekIndex) -> dict:
    """``mu_t(i) P_t(i,j) (1 − P_t(i,j))`` (and ``mu_0 (1 − mu_0)``), the logits' shape.

    Measured on a 6-week, 11-cell grid (ent_weight 0.1): condition number 9.7e4 on the gauge
    subspace, 206 after scaling by this diagonal (the exact Jacobi diagonal gave 118).
    """
    mu, M = markov.marginals(params, index)
    P = M / jnp.maximum(M.sum(-1, keepdims=True), jnp.finfo(M.dtype).tiny)
    return {"z0": mu[0] * (1 - mu[0]), "Z": mu[:-1, :, None] * P * (1 - P)}


def project_gauge(tree: dict, mask: dict) -> dict:
    """Remove each row's mean over its real slots and zero the padding (the shift gauge)."""
    def one(x, m):
        m = m.astype(x.dtype)
        n = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
        return (x - (x * m).sum(-1, keepdims=True) / n) * m
    return {k: one(tree[k], mask[k]) for k in tree}


def make_hvp(loss, mode: str, fd_step: float = 1e-3):
    """``hessian(params, theta, state) -> (v -> H v)``: the logit Hessian of ``loss(p, θ, state)``
    at one point, as a linear map (traceable).

    ``linearize``: forward-over-reverse, linearised once at the point (:func:`jax.linearize`), so
    every product after the first runs only the linear part: no primal recomputation, and for
    W2 no Sinkhorn solve (its potentials are the point's); it keeps the linearisation's
    residuals (a few arrays of the logits' size). ``jvp``: forward-over-reverse recomputed per
    product (least memory). Both exact. ``fd``: centred differences of the gradient (for losses
    whose reverse pass is not differentiable forward, at O(fd_step²) error).

    Measured at 205 cells a week (W2, float64, 20 products in a loop after compilation, 2-core
    CPU): 0.119 s a product linearised against 0.174 s recomputed; L2 0.038 s against 0.052 s
    (``docs/benchmarks/tuning.md``, Speed).
    """
    grad = jax.grad(loss)
    if mode == "linearize":
        def hessian(params, theta, state):
            return jax.linearize(lambda p: grad(p, theta, state), params)[1]
    elif mode == "jvp":
        def hessian(params, theta, state):
            return lambda v: jax.jvp(lambda p: grad(p, theta, state), (params,), (v,))[1]
    elif mode == "fd":
        def hessian(params, theta, state):
            def hv(v):
                h = fd_step / jnp.maximum(jnp.sqrt(sum(jnp.vdot(x, x) for x in v.values())),
                                          1e-30)
                plus = grad(jax.tree_util.tree_map(lambda p, d: p + h * d, params, v), theta,
                            state)
                minus = grad(jax.tree_util.tree_map(lambda p, d: p - h * d, params, v), theta,
                             state)
                return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * h), plus, minus)
            return hv
    else:
        raise ValueError(f"tune.solve.hvp: unknown mode {mode!r}; choose linearize, jvp or fd")
    return hessian


class Operator(NamedTuple):
    """``A = H + λD`` on flat gauge-projected vectors, and its preconditioner ``(D + λD)^-1``."""

    matvec: object  # flat -> flat
    precond: object  # flat -> flat
    scale: jax.Array  # flat D (floored): the damping's metric
    ravel: object  # pytree -> flat
    unravel: object  # flat -> pytree


def operator(hessian, params, theta, state, space, damping, precondition=True) -> Operator:
    """The damped, gauge-projected Hessian at ``params`` (traceable; ``hessian`` as
    :func:`make_hvp` returns it, evaluated here once); its preconditioner is
    ``((1 + λ)D)^-1`` (the identity with ``precondition=False``). ``space``: where the fit runs
    (:class:`birdflow.tuning.inner.Inner`, the logits, or
    :class:`birdflow.tuning.kernel_form.KernelForm`): its ``mask`` and ``diagonal``."""
    mask = space.mask
    flat_mask, unravel = ravel_pytree(mask)
    diag = ravel_pytree(space.diagonal(params, theta))[0]
    d = diag + DIAG_FLOOR * jnp.max(diag)
    hvp = hessian(params, theta, state)

    def ravel(tree):
        return ravel_pytree(project_gauge(tree, mask))[0]

    def matvec(x):  # P (H + λD) P with P the gauge projection: symmetric on the subspace
        v = project_gauge(unravel(x), mask)
        hv = hvp(v)
        return ravel(jax.tree_util.tree_map(lambda a, b, c: a + damping * b * c, hv,
                                            unravel(d), v))

    def precond(x):
        return ravel(unravel(x / ((1 + damping) * d) if precondition else x))

    return Operator(matvec, precond, d * flat_mask, ravel, unravel)


def block_inverse(op: Operator, params: dict, key: str = "G", colors: int = 8,
                  floor: float = 1e-8) -> jax.Array:
    """(T, n, n): the inverse of each week's diagonal block of A on ``params[key]`` (T, n: one
    row of potentials per week), for :func:`with_blocks` (traceable).

    The mass diagonal misses the within-week coupling of a week's potentials: a block of cells
    whose potentials shift together changes the marginals little (at zoo_leapfrog's converged
    first fit, CG to 1e-4 needed 3,899 steps with the mass diagonal, 178 with these blocks at
    8 colours, 61 with the exact blocks). The blocks are probed with ``colors × n`` products:
    the unit vector of cell j in every week t ≡ r (mod ``colors``) at once, so week t's block
    picks up the coupling to weeks t ± colors, ± 2·colors, … (small: it passes through
    ``colors`` transitions). Each block is symmetrised and inverted through its eigenvalues'
    absolute values floored at ``floor`` × the largest (positive definite where A is
    indefinite; the gauge's and the padding's zero eigenvalues are removed by the projection
    that follows every preconditioning).
    """
    T, n = params[key].shape
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    week = jnp.arange(T)

    def column(j, r):
        unit = jnp.zeros((T, n), params[key].dtype).at[:, j].set((week % colors == r) * 1.0)
        return op.unravel(op.matvec(op.ravel({**zeros, key: unit})))[key]  # (T, n)

    blocks = jnp.zeros((T, n, n), params[key].dtype)
    for r in range(colors):
        cols = jax.lax.map(lambda j, r=r: column(j, r), jnp.arange(n), batch_size=8)  # (j, T, i)
        blocks = jnp.where((week % colors == r)[:, None, None],
                           jnp.transpose(cols, (1, 2, 0)), blocks)
    blocks = 0.5 * (blocks + jnp.swapaxes(blocks, 1, 2))
    w, U = jnp.linalg.eigh(blocks)
    w = jnp.maximum(jnp.abs(w), floor * jnp.max(jnp.abs(w), axis=1, keepdims=True))
    w = jnp.maximum(w, jnp.finfo(w.dtype).tiny)
    return jnp.einsum("tik,tk,tjk->tij", U, 1.0 / w, U)


def probe_blocks(hessian, params, theta, state, space, damping, colors: int = 8) -> jax.Array:
    """:func:`block_inverse` of the damped Hessian at ``params`` on the kernel form's
    potentials ``G`` (traceable; ``hessian`` as :func:`make_hvp` returns it): what a Newton fit
    and the hypergradient's solve both probe."""
    op = operator(hessian, params, theta, state, space, damping)
    return block_inverse(op, params, "G", colors)


def with_blocks(op: Operator, inverse: jax.Array, key: str = "G") -> Operator:
    """``op`` preconditioned on ``key`` by :func:`block_inverse`'s blocks (possibly built at an
    earlier point: a preconditioner need not be exact); other leaves keep the diagonal."""
    diagonal = op.precond

    def precond(x):
        tree = op.unravel(diagonal(x))
        tree[key] = jnp.einsum("tij,tj->ti", inverse, op.unravel(x)[key])
        return op.ravel(tree)

    return op._replace(precond=precond)


class CGResult(NamedTuple):
    x: jax.Array
    steps: jax.Array
    residual: jax.Array  # ||b − A x|| / ||b||
    negative: jax.Array  # stopped at a direction of non-positive curvature
    watched: jax.Array  # Wᵀx (the quantity of interest; empty without ``watch``)
    change: jax.Array  # relative change of Wᵀx over the last ``every`` steps
    direction: jax.Array  # the search direction of non-positive curvature (when ``negative``)


def pcg(op: Operator, b: jax.Array, x0: jax.Array, rtol, max_steps: int,
        watch: jax.Array | None = None, wtol: float = 0.0, every: int = 10,
        scaled: bool = False) -> CGResult:
    """Preconditioned CG for ``A x = b``.

    Stops at ``||b − A x|| <= rtol ||b||`` (``scaled``: in the preconditioner's norm,
    ``||r||_{M⁻¹} = sqrt(rᵀ M⁻¹ r)``, which for the mass-diagonal preconditioner is the
    mass-scaled norm a Newton fit's stationarity is judged in); or, given ``watch`` (n, m)
    and ``wtol > 0``, when the quantity of interest ``Wᵀx`` changed by at most ``wtol``
    (relative) over the last ``every`` steps — CG minimises the A-norm error, and on an
    ill-conditioned A the directions that keep the residual large can carry nothing of
    ``Wᵀx``. Also stops (``negative``) at the first search direction p with ``pᵀAp <= 0``:
    ``x`` is then the last iterate before it (zero if it is the first), as truncated Newton
    needs. Traceable.
    """
    tiny = jnp.finfo(b.dtype).tiny
    bnorm = jnp.maximum(jnp.linalg.norm(b), tiny)
    W = jnp.zeros((b.size, 0), b.dtype) if watch is None else watch
    r = b - op.matvec(x0)
    z = op.precond(r)
    q0 = W.T @ x0
    if scaled:  # ||r||_{M^-1}, from the rᵀz CG computes anyway
        bnorm = jnp.sqrt(jnp.maximum(jnp.vdot(b, op.precond(b)), tiny))
        size = lambda r, rz: jnp.sqrt(jnp.maximum(rz, 0.0))  # noqa: E731
    else:
        size = lambda r, rz: jnp.linalg.norm(r)  # noqa: E731

    def cond(c):
        _, r, _, _, rz, k, neg, _, change, _ = c
        go = (k < max_steps) & (size(r, rz) > rtol * bnorm) & ~neg
        if watch is not None and wtol > 0:
            go = go & ~((k > 0) & (k % every == 0) & (change <= wtol))
        return go

    def body(c):
        x, r, z, p, rz, k, _, q_ref, change, _ = c
        p_in = p
        ap = op.matvec(p)
        pap = jnp.vdot(p, ap)
        neg = pap <= 0
        alpha = jnp.where(neg, 0.0, rz / jnp.where(neg, 1.0, pap))
        x = x + alpha * p
        r = r - alpha * ap
        z = op.precond(r)
        rz_new = jnp.vdot(r, z)
        p = z + (rz_new / jnp.maximum(rz, tiny)) * p
        k = k + 1
        at_check = k % every == 0
        q = W.T @ x
        change = jnp.where(at_check, jnp.linalg.norm(q - q_ref)
                           / jnp.maximum(jnp.linalg.norm(q), tiny), change)
        q_ref = jnp.where(at_check, q, q_ref)
        return x, r, z, p, rz_new, k, neg, q_ref, change, p_in

    init = (x0, r, z, z, jnp.vdot(r, z), jnp.asarray(0), jnp.asarray(False), q0,
            jnp.asarray(jnp.inf, b.dtype), z)
    x, r, _, _, _, k, neg, _, change, p = jax.lax.while_loop(cond, body, init)
    r = b - op.matvec(x)
    return CGResult(x, k, size(r, jnp.vdot(r, op.precond(r))) / bnorm, neg, W.T @ x, change, p)


def scaled_norm(g: dict, params: dict, theta, space) -> jax.Array:
    """``||D^-½ g||₂`` with D the floored mass diagonal of ``space`` at ``params`` (g
    gauge-projected)."""
    d = space.diagonal(params, theta)
    top = jnp.max(jnp.stack([jnp.max(x) for x in d.values()]))
    return jnp.sqrt(sum(jnp.sum(g[k] ** 2 / (d[k] + DIAG_FLOOR * top)) for k in g))


def tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree)))
