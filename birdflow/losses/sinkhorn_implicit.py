"""Implicit-function-theorem derivatives of one entropic OT solve (``grad_mode: implicit``).

At the Sinkhorn solution the potentials (f, g) solve the log-marginal conditions (OTT's
``ImplicitDiff`` form) ``F = eps [log(P 1) - log a, log(P^T 1) - log b] = 0`` with
``P_ij = exp((f_i + g_j - C_ij) / eps)``. Their Jacobian in (f, g) is ``eps D^-1 K`` with
``D = diag(P 1, P^T 1)`` and

    K = (1/eps) [[diag(P 1), P], [P^T, diag(P^T 1)]]          (symmetric, PSD),

so ``d(f, g) = K^+ [(P1 / a) da, (P^T 1 / b) db]`` (the implicit function theorem), and the
regularised cost ``D = <a, f> + <b, g> - eps (sum P - 1)`` has the gradient

    dD/da = f + (P 1 / a) [K^+ r]_f,   dD/db = g + (P^T 1 / b) [K^+ r]_g,
    r = (a - P 1, b - P^T 1)  (the marginal errors Sinkhorn stopped at).

At convergence r = 0 and this is the envelope (``danskin``) gradient; before it, the
correction is what differentiating through the optimality conditions adds (equal to OTT's
``ImplicitDiff(use_danskin=False)``, tested). Derivatives of the potentials themselves
(Hessian-vector products, ``jax.jvp`` of ``jax.grad``) apply the same solve to the
perturbation: :func:`potentials` carries it as its JVP rule.

Linear system: with ``A = diag(P1)^-1/2 P diag(P^T 1)^-1/2`` (Jacobi scaling, singular
values in [0, 1]) K reduces to the Schur complement ``(I - A A^T) x = rhs`` whose null
vector ``sqrt(P 1)`` (the potentials' constant shift) is known exactly; it is added back as
``q q^T`` so the operator is positive definite and conjugate gradients solve it in float32
at n >= 1000 (a small ridge in float32 damps directions the plan barely determines). Padding slots are kept out of the system (identity there, zero derivative).
A week whose solve does not reach its tolerance (or is not finite) falls back to the
envelope gradient and is counted (``fallback``); so does a week whose marginal error ``r`` is
above ``SolveSettings.max_error``: the correction ``K^+ r`` grows without bound with ``r``
(measured 2e5-9e5 x the envelope gradient at an L1 error of 0.44), while below ~1e-2 it brings
the gradient 10-200x closer to a tight solve's.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.sparse.linalg import cg

from birdflow.losses.blur import cold_schedule

CG_MAX_STEPS = 1000
MIN_PLAN_MASS = 1e-20  # plan row/column sums below this are left out of the linear system
FLOAT32_DEFAULTS = (1e-4, 1e-6, 1e-5)  # CG rtol, atol, ridge (eigenvalues lie in [0, 1])
FLOAT64_DEFAULTS = (1e-8, 1e-12, 0.0)


class SolveSettings(NamedTuple):
    """Static settings of one implicit solve (hashable).

    Attributes:
        solver: the OTT Sinkhorn solver (danskin mode: no autodiff inside it).
        rtol: CG relative tolerance of the Schur-complement solve; atol: absolute.
        max_steps: CG step cap; a solve that hits it falls back to the envelope gradient.
        ridge: added to the Schur complement's diagonal (Tikhonov): directions the plan
            barely determines (eigenvalue << ridge; a kernel that hardly mixes, epsilon
            small for the cell spacing) get no derivative instead of a float32-noise one.
        None picks :data:`FLOAT32_DEFAULTS` or :data:`FLOAT64_DEFAULTS` by dtype.
        max_error: the largest L1 marginal error at which the correction is used; above it
            the week falls back to the envelope gradient (None: no bound).
        method: "cg" (conjugate gradients, every solve) or "direct" (the Schur complement
            inverted once per plan by :func:`spd_inverse`, every solve a matrix-vector
            product; for Hessian-vector products, which solve at one plan many times).
    """

    solver: object
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = CG_MAX_STEPS
    ridge: float | None = None
    max_error: float | None = None
    method: str = "cg"

    def resolved(self, dtype) -> tuple[float, float, float]:
        """(rtol, atol, ridge) for ``dtype``: None picks the float32 / float64 defaults."""
        single = jnp.finfo(dtype).bits < 64
        default = FLOAT32_DEFAULTS if single else FLOAT64_DEFAULTS
        return tuple(d if v is None else v for v, d in
                     zip((self.rtol, self.atol, self.ridge), default, strict=True))


def _plan(make_geom, cost_args, eps, f, g):
    geom = make_geom(*cost_args, epsilon=eps)
    return geom.transport_from_potentials(f, g)


def spd_inverse(S: jax.Array) -> jax.Array:
    """The inverse of a symmetric positive definite (n, n) matrix by Gauss-Jordan elimination.

    Without pivoting, which is stable for SPD matrices; plain XLA operations, no LAPACK call:
    two LAPACK factorisations that XLA's CPU runtime runs concurrently deadlocked on the
    2-core CPU (jaxlib 0.10.2; ``docs/benchmarks/tuning.md``, Speed), and the debiased loss
    has several per evaluation. n steps of a rank-one update: at n = 205, 104 matrices take
    about 1.2 s on one core.
    """
    def step(j, M):
        pivot = M[j, j]
        row, col = M[j] / pivot, M[:, j]
        M = (M - col[:, None] * row[None, :]).at[j].set(row).at[:, j].set(-col / pivot)
        return M.at[j, j].set(1.0 / pivot)

    return jax.lax.fori_loop(0, S.shape[-1], step, S)


def kkt_solve(P: jax.Array, valid: jax.Array, eps, u: jax.Array, v: jax.Array,
              settings: SolveSettings) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solve ``K (x, y) = (u, v)`` for one week (K as in the module doc), minimum-gauge.

    Args:
        P: (n, n) transport plan at the potentials; valid: (n,) bool, real (non-padding) slots.
        eps: entropic regularisation; u, v: (n,) right-hand sides (0 is used in padding).
        settings: CG tolerances and step cap.

    Returns:
        (x, y, ok): the solution (0 in padding) and whether CG reached its tolerance with a
        finite result.
    """
    dtype = P.dtype
    P = P * valid[:, None] * valid[None, :]
    ra, rb = P.sum(1), P.sum(0)
    # rows/columns the plan leaves (almost) empty carry no derivative: kept out, like padding
    m_a = (valid & (ra > MIN_PLAN_MASS)).astype(dtype)
    m_b = (valid & (rb > MIN_PLAN_MASS)).astype(dtype)
    tiny = jnp.finfo(dtype).tiny
    ia = m_a * jax.lax.rsqrt(jnp.maximum(ra, MIN_PLAN_MASS))
    ib = m_b * jax.lax.rsqrt(jnp.maximum(rb, MIN_PLAN_MASS))
    A = ia[:, None] * P * ib[None, :]
    m = m_a
    q = jnp.sqrt(jnp.maximum(ra, tiny)) * m
    q = q / jnp.maximum(jnp.linalg.norm(q), tiny)
    ut, vt = ia * u, ib * v
    rhs = eps * (ut - A @ vt)
    rhs = rhs - q * (q @ rhs)

    rtol, atol, ridge = settings.resolved(dtype)

    def matvec(x):  # (I - A A^T + ridge) x + q q^T x on real slots, x in padding
        return x - m * (A @ (A.T @ x)) + ridge * m * x + q * (q @ x)

    # CG on the unit-norm right-hand side (float32 residuals are ~1e-6..1e-10: their squares
    # underflow otherwise); jax's cg is a custom_linear_solve, so it differentiates (HVPs).
    # lineax 0.1.1's CG returned "non-finite output" after one step on these PD systems when
    # their smallest eigenvalue was ~1e-5 (tiny grids), so convergence is checked here.
    scale = jnp.linalg.norm(rhs)
    unit = rhs / jnp.where(scale > 0, scale, 1.0)
    if settings.method == "direct":  # the same operator as a matrix, inverted once per plan;
        # custom_linear_solve differentiates matvec (the plan), the inverse only applies
        S = (jnp.eye(m.size, dtype=dtype) - m[:, None] * (A @ A.T) + jnp.diag(ridge * m)
             + q[:, None] * q[None, :])
        inverse = jax.lax.stop_gradient(spd_inverse(S))
        sol = jax.lax.custom_linear_solve(matvec, unit, lambda _, b: inverse @ b,
                                          symmetric=True)
    else:
        sol, _ = cg(matvec, unit, tol=rtol, atol=atol, maxiter=settings.max_steps)
    converged = jnp.linalg.norm(matvec(sol) - unit) <= 10 * rtol + atol
    sol = sol * scale
    xt = sol - q * (q @ sol)
    yt = eps * vt - A.T @ xt
    x, y = ia * xt, ib * yt
    ok = converged & jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
    return jnp.where(ok, x, 0.0), jnp.where(ok, y, 0.0), ok


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def potentials(settings: SolveSettings, make_geom, a, b, cost_args, valid, eps, f0, g0):
    """Sinkhorn potentials (f, g) with IFT tangents; also iterations, converged flag and the
    last L1 marginal error Sinkhorn measured.

    ``cost_args`` build the geometry with ``make_geom(*cost_args, epsilon=eps)``; the cost,
    eps and the warm start are constants for differentiation.
    """
    from ott.problems.linear import linear_problem

    geom = make_geom(*cost_args, epsilon=cold_schedule(eps, f0, g0, settings.solver.max_iterations))
    out = settings.solver(linear_problem.LinearProblem(geom, a, b), init=(f0, g0))
    # iterations and the converged flag as floats: integer outputs of a custom_jvp need
    # float0 tangents, which broke linearising it under jit + vmap
    idx = jnp.maximum(jnp.sum(out.errors != -1) - 1, 0)
    return (out.f, out.g, out.n_iters.astype(a.dtype), out.converged.astype(a.dtype),
            out.errors[idx].astype(a.dtype))


@potentials.defjvp
def _potentials_jvp(settings, make_geom, primals, tangents):
    a, b, cost_args, valid, eps, f0, g0 = primals
    da, db = tangents[0], tangents[1]
    f, g, it, conv, err = potentials(settings, make_geom, a, b, cost_args, valid, eps, f0, g0)
    P = _plan(make_geom, cost_args, eps, f, g)
    da, db = _zero_if_none(da, a) * P.sum(1) / a, _zero_if_none(db, b) * P.sum(0) / b
    df, dg, _ = kkt_solve(P, valid, eps, da, db, settings)
    return (f, g, it, conv, err), (df, dg, *(jnp.zeros_like(x) for x in (it, conv, err)))


def _zero_if_none(t, like):
    return jnp.zeros_like(like) if isinstance(t, jax.custom_derivatives.SymbolicZero) or t is None \
        else t


def dual_value(P: jax.Array, a, b, f, g, eps) -> jax.Array:
    """The dual objective at the potentials: <a, f> + <b, g> - eps (sum P - 1).

    OTT's ``reg_ot_cost`` (KL to a x b) is this minus eps (<a, log a> + <b, log b>), a
    closed-form term :func:`birdflow.losses.location` adds outside the custom derivative.
    """
    return a @ f + b @ g - eps * (P.sum() - 1.0)


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def reg_ot(settings: SolveSettings, make_geom, a, b, cost_args, valid, eps, f0, g0):
    """Regularised OT cost of one week with the implicit gradient in (a, b).

    A ``custom_jvp`` (not ``custom_vjp``), so reverse mode transposes it and forward-over-
    reverse (``jax.jvp`` of ``jax.grad``) differentiates the gradient f + x through
    :func:`potentials`' IFT rule, also inside ``lax.map``. The f and g outputs are for warm
    starts and carry zero tangents (differentiate :func:`potentials` for their derivatives).

    Returns:
        (value, f, g, iterations, converged, fallback, error), iterations and the flags as
        floats (1.0 = true): ``fallback`` is 1 when the gradient's linear solve failed (or the
        marginal error was above ``settings.max_error``) and the envelope gradient was used (only known when a derivative is taken; 0 otherwise);
        ``error`` the last L1 marginal error Sinkhorn measured.
    """
    f, g, it, conv, err = potentials(settings, make_geom, a, b, cost_args, valid, eps, f0, g0)
    P = _plan(make_geom, cost_args, eps, f, g)
    # (0 * a.sum(): batched like the rule's flag under vmap, which jax needs when linearising)
    return dual_value(P, a, b, f, g, eps), f, g, it, conv, 0 * a.sum(), err


@reg_ot.defjvp
def _reg_ot_jvp(settings, make_geom, primals, tangents):
    a, b, cost_args, valid, eps, f0, g0 = primals
    da, db = _zero_if_none(tangents[0], a), _zero_if_none(tangents[1], b)
    f, g, it, conv, err = potentials(settings, make_geom, a, b, cost_args, valid, eps, f0, g0)
    P = _plan(make_geom, cost_args, eps, f, g)
    m = valid.astype(a.dtype)
    x, y, ok = kkt_solve(P, valid, eps, (a - P.sum(1)) * m, (b - P.sum(0)) * m, settings)
    if settings.max_error is not None:  # K^+ r is unbounded in r: only near convergence
        ok = ok & (err <= settings.max_error)
        x, y = jnp.where(ok, x, 0.0), jnp.where(ok, y, 0.0)
    value = dual_value(P, a, b, f, g, eps)
    dvalue = (f + x * P.sum(1) / a) @ da + (g + y * P.sum(0) / b) @ db
    fallback = (~ok).astype(a.dtype)
    zeros = tuple(jnp.zeros_like(x) for x in (f, g, it, conv, fallback, err))
    return (value, f, g, it, conv, fallback, err), (dvalue, *zeros)
