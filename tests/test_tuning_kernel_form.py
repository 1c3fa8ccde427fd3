"""The kernel form of the inner problem (``birdflow.tuning.kernel_form``) on small float64 grids.

Checked: the bridge chain has the marginals it was built for (the S&T start: L2 = 0); a
kernel-form fit is a stationary point of the full logit problem too, at the same inner loss as
a logits fit; its implicit hypergradient equals the logits form's at the same point; a warm
start keeps the previous fit's marginals; the sparse (neighbourhood) layout works the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_bfdata
from test_tuning import _intervals


def _setup(ew=3e-3, sparse=False, n_weeks=6):
    import jax.numpy as jnp

    from birdflow.losses.config import LossConfig
    from birdflow.model import markov
    from birdflow.tuning import inner, likelihood
    from birdflow.tuning.kernel_form import KernelForm

    ds = make_tiny_bfdata(3, 4, n_weeks=n_weeks, seed=1)
    index = markov.WeekIndex.from_bfdata(ds)
    if sparse:  # 100 km cells: each cell's 3 x 3 block
        from birdflow.model.neighbours import sparse_index

        index = sparse_index(ds, radius_km=160.0)
    cfg = LossConfig(dist_weight=0.01, ent_weight=ew, dist_pow=0.4)
    prob = inner.Inner.build(ds, cfg, jnp.float64, index)
    batch = likelihood.make_batch(_intervals(ds, n=60, seed=0), prob.index)

    def outer(p):
        return -likelihood.mean_log_likelihood(p, prob.index, batch, batch.max_lag)

    theta = jnp.asarray(inner.theta_from_config(cfg))
    space = KernelForm(prob)
    y0 = space.start(prob.problem.targets, inner.st_init(ds, index, jnp.float64)["z0"], theta)
    return prob, space, outer, theta, y0


def test_bridge_start_has_the_st_marginals():
    import jax

    from birdflow.model import markov

    with jax.enable_x64(True):
        prob, space, _, theta, y0 = _setup()
        mu, M = markov.marginals(space.logits(y0, theta), prob.index)
        target = np.asarray(prob.problem.targets)
        target = target / target.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(mu.sum(-1)), 1.0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(mu), target, atol=1e-10)
        assert float(prob.value(space.logits(y0, theta), theta, {})[1][0]["l2"]) < 1e-18


def test_kernel_fit_is_a_stationary_point_of_the_logits():
    """Full logit gradient (mass-scaled) at a kernel-form fit is at the fit's tolerance, and a
    logits fit from the S&T chain reaches the same inner loss."""
    import jax

    from birdflow.tuning import curvature, newton

    with jax.enable_x64(True):
        prob, space, _, theta, y0 = _setup()
        k = newton.make_newton(space, newton.NewtonSettings(gtol=1e-10))(y0, theta, {})
        assert k.converged, k.grad_norm
        w = space.logits(k.params, theta)
        g = curvature.project_gauge(jax.grad(prob.loss)(w, theta, {}), prob.mask)
        full = float(curvature.scaled_norm(g, w, theta, prob))
        print(f"kernel fit: {k.steps} Newton steps, |g|_D {k.grad_norm:.1e}; full |g|_D {full:.1e}")
        assert full < 1e-8
        from birdflow.tuning import inner as inner_mod

        p0 = inner_mod.st_init(*_tiny_ds_index(prob))
        lg = newton.make_newton(prob, newton.NewtonSettings(gtol=1e-10))(p0, theta, {})
        assert lg.converged
        print(f"logits fit: {lg.steps} Newton steps; loss {lg.loss:.12f} vs kernel {k.loss:.12f}")
        assert abs(lg.loss - k.loss) < 1e-9


def _tiny_ds_index(prob):
    import jax.numpy as jnp

    return make_tiny_bfdata(3, 4, n_weeks=6, seed=1), prob.index, jnp.float64


def test_kernel_hypergradient_equals_the_logits_one_at_the_same_point():
    import jax

    from birdflow.tuning import hypergrad, newton

    with jax.enable_x64(True):
        prob, space, outer, theta, y0 = _setup()
        k = newton.make_newton(space, newton.NewtonSettings(gtol=1e-11))(y0, theta, {})
        settings = hypergrad.SolveSettings(damping=0.0, rtol=1e-11, wtol=0.0, max_steps=3000)
        hk = hypergrad.make_implicit(space, outer, settings)(k.params, theta, {})
        hl = hypergrad.make_implicit(prob, outer, settings)(space.logits(k.params, theta), theta,
                                                            {})
        assert hk.ok and hl.ok, (hk.message, hl.message)
        print(f"kernel {hk.grad[:3]} (CG {hk.cg_steps}); logits {hl.grad[:3]} (CG {hl.cg_steps})")
        np.testing.assert_allclose(hk.grad[:3], hl.grad[:3], rtol=1e-5)
        assert hk.cg_steps < hl.cg_steps

        # the same system preconditioned by each week's block (probed here; a fit hands its
        # own over): the same hypergradient; the logits have no potentials to block
        implicit = hypergrad.make_implicit(space, outer, settings, block_colors=2)
        blocks = implicit.blocks(k.params, theta, {})
        hb = implicit(k.params, theta, {}, blocks=blocks)
        assert hb.ok and hb.blocks and not hk.blocks, hb.message
        print(f"blocks {hb.grad[:3]} (CG {hb.cg_steps})")
        np.testing.assert_allclose(hb.grad[:3], hk.grad[:3], rtol=1e-7)
        assert hypergrad.make_implicit(prob, outer, settings).blocks(
            space.logits(k.params, theta), theta, {}) is None


def test_warm_start_keeps_the_fits_marginals():
    import jax
    import jax.numpy as jnp

    from birdflow.model import markov
    from birdflow.tuning import newton

    with jax.enable_x64(True):
        prob, space, _, theta, y0 = _setup()
        k = newton.make_newton(space, newton.NewtonSettings(gtol=1e-9))(y0, theta, {})
        new = theta + jnp.asarray([0.3, -0.4, 0.2, 0.0])
        y = space.warm(k.params, theta, new)
        before = markov.marginals(space.logits(k.params, theta), prob.index)[0]
        after = markov.marginals(space.logits(y, new), prob.index)[0]
        np.testing.assert_allclose(np.asarray(after), np.asarray(before), atol=1e-10)
        assert float(space.loss(y, new, {})) < float(space.loss(k.params, new, {}))


@pytest.mark.parametrize("ew", [3e-3, 1e-4])
def test_sparse_layout_bridge_and_fit(ew):
    import jax

    from birdflow.model import markov
    from birdflow.tuning import newton

    with jax.enable_x64(True):
        prob, space, _, theta, y0 = _setup(ew=ew, sparse=True)
        assert prob.index.n_neighbours < prob.index.n_max
        mu = markov.marginals(space.logits(y0, theta), prob.index)[0]
        np.testing.assert_allclose(np.asarray(mu.sum(-1)), 1.0, atol=1e-12)
        k = newton.make_newton(space, newton.NewtonSettings(gtol=1e-8, max_steps=200))(
            y0, theta, {})
        assert k.converged, k.grad_norm


@pytest.mark.slow  # ~1 min: a dense operator and three fits
def test_block_preconditioner_has_the_hessians_week_blocks_and_speeds_cg():
    """Probed with as many colours as weeks, :func:`curvature.block_inverse` inverts exactly the
    operator's week blocks (checked against the dense operator). On this 10-week problem CG to
    1e-8 needs fewer steps with them than with the mass diagonal (58 against 68; at
    zoo_leapfrog's fit, 90 cells a week, 61 against 3,899), and a Newton fit with
    ``precond=block`` (8 colours: weeks t ± 8 leak into week t's block) reaches the same
    stationary point as one with the diagonal."""
    import jax
    import jax.numpy as jnp

    from birdflow.tuning import curvature, newton

    with jax.enable_x64(True):
        prob, space, _, theta, y0 = _setup(n_weeks=10)
        fit = newton.make_newton(space, newton.NewtonSettings(gtol=1e-10, precond="mass"))
        k = fit(y0, theta, {})
        assert k.converged
        hessian = curvature.make_hvp(space.loss, "linearize")
        op = curvature.operator(hessian, k.params, theta, {}, space, 1e-10)
        T, n = k.params["G"].shape
        A = np.asarray(jax.vmap(op.matvec)(jnp.eye(T * n + n)))  # symmetric: rows = columns
        exact = curvature.block_inverse(op, k.params, "G", colors=T)
        for t in range(T):
            real = np.asarray(space.mask["G"][t]) > 0  # the week's real slots
            block = A[t * n:(t + 1) * n, t * n:(t + 1) * n][np.ix_(real, real)]
            # on the week's gauge subspace (zero mean over its real slots) the probed inverse
            # inverts the dense block: B (B⁻¹ x) = x for every zero-mean x
            x = np.random.default_rng(t).normal(size=int(real.sum()))
            x -= x.mean()
            y = np.asarray(exact[t])[np.ix_(real, real)] @ x
            y -= y.mean()
            np.testing.assert_allclose(block @ y, x, rtol=1e-6, atol=1e-9 * np.abs(x).max())

        b = op.ravel(jax.tree_util.tree_map(lambda a: jnp.sin(jnp.arange(a.size) * 0.7).reshape(
            a.shape), k.params))
        steps = {}
        for name, o in (("mass", op), ("exact", curvature.with_blocks(op, exact))):
            r = curvature.pcg(o, b, jnp.zeros_like(b), 1e-8, 5000)
            assert float(r.residual) <= 1e-8 and not bool(r.negative), name
            steps[name] = int(r.steps)
        print("CG steps to 1e-8:", steps)
        assert steps["exact"] < steps["mass"], steps

        blocked = newton.make_newton(space, newton.NewtonSettings(gtol=1e-10, precond="block"))(
            y0, theta, {})
        assert blocked.converged and abs(blocked.loss - k.loss) < 1e-10, (blocked.loss, k.loss)
        assert k.blocks is None and blocked.blocks.shape == (T, n, n)  # for the hypergradient
