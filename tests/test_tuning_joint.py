"""Joint tuning (one θ, or a trait model, for several species) and its hypergradient.

The joint and trait hypergradients (:func:`birdflow.tuning.joint.hypergradient`: each
species' implicit hypergradient pulled back through :class:`birdflow.tuning.traits.ThetaMap`)
against centred finite differences of φ ↦ L(φ), Richardson-extrapolated, on two tiny float64
species (``_problem`` of ``test_tuning_hypergradient.py`` with other S&T maps and birds), every
point refitted tightly in the kernel form; θ_s is computed here from φ by hand, not by the map.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_tuning_hypergradient import FD_STEP, TIGHT, _problem

# two species: (S&T seed, tracks seed, tuning intervals); unequal counts weigh them 0.6 / 0.4
SPECIES = [(1, 0, 60), (5, 3, 40)]
SLOPES = np.array([0.15, -0.1, 0.08])  # A of the trait model (one trait), where it is checked
RIDGE = 0.1


def _members(tight_gtol=TIGHT[("l2", "tune_start")]):
    from birdflow.tuning import hypergrad, joint, newton, search
    from birdflow.tuning.kernel_form import KernelForm

    members, ts = [], None
    solve = hypergrad.SolveSettings(damping=0.0, rtol=1e-11, wtol=0.0, max_steps=3000)
    for k, (data_seed, tracks_seed, n) in enumerate(SPECIES):
        prob, outer, theta, p0, ts = _problem("l2", "tune_start", data_seed, tracks_seed, n)
        space = KernelForm(prob)
        tight = newton.make_newton(space, newton.NewtonSettings(gtol=tight_gtol, max_steps=400),
                                   ts.solve.hvp)
        parts = search.Parts(fit=tight, implicit=hypergrad.make_implicit(space, outer, solve),
                             outer=outer, monitors=(), space=space)
        y0 = space.start(prob.problem.targets, p0["z0"], theta)
        members.append(joint.Member(f"s{k}", parts, y0, prob.init_state(), np.asarray(theta), n))
    ts = replace(ts, solve=solve, inner=replace(ts.inner, gtol=tight_gtol, max_steps=400))
    return members, ts, np.asarray(theta)


def _theta_by_hand(theta0, phi, x):
    """θ_s of the pooled (len(phi) == 3) or one-trait (6) model, written out."""
    theta = np.array(theta0, float)
    theta[:3] = phi[:3] + (phi[3:] * x if len(phi) > 3 else 0.0)
    return theta


def _finite_differences(members, theta0, phi, xs, ridge, step):
    """Richardson-extrapolated centred differences of L(φ) = Σ w_s L_s + ridge/2 ||A||²."""
    w = np.array([m.n_intervals for m in members], float)
    w /= w.sum()
    base = [(m.params, m.theta, m.state) for m in members]

    def loss(ph):
        total = 0.5 * ridge * float(np.sum(ph[3:] ** 2))
        for m, (y, th_from, state), x, ws in zip(members, base, xs, w, strict=True):
            th = _theta_by_hand(theta0, ph, x)
            r = m.parts.fit(m.parts.warm(y, th_from, th), th, state)
            assert r.converged, r.grad_norm
            total += ws * float(m.parts.outer(m.parts.logits(r.params, th)))
        return total

    def centred(i, h):
        e = np.zeros(len(phi))
        e[i] = h
        return (loss(phi + e) - loss(phi - e)) / (2 * h)

    return np.array([(4 * centred(i, step / 2) - centred(i, step)) / 3 for i in range(len(phi))])


@pytest.mark.slow  # ~25 s of CPU each (two species, 12-36 tight refits)
@pytest.mark.parametrize("model", ["pooled", "traits"])
def test_joint_hypergradient_agrees_with_finite_differences(model):
    """Relative error <= 1e-3 per component of dL/dφ with tight fits and solves (measured:
    pooled <= 5.7e-6, trait model <= 1.9e-5)."""
    import jax

    from birdflow.tuning import joint, traits

    with jax.enable_x64(True):
        members, ts, theta0 = _members()
        free = np.array([True, True, True, False])
        lo, hi = (np.array([ts.bounds[n][i] for n in ("log_dist_weight", "log_ent_weight",
                                                      "dist_pow", "log_w2_scale")])
                  for i in (0, 1))
        if model == "pooled":
            tmap = traits.pooled(theta0, free, lo, hi, 2)
            xs, phi, ridge = [0.0, 0.0], theta0[:3], 0.0
        else:
            x = traits.standardize(np.array([[1.0], [2.5]]), [0, 1])  # one trait, two species
            tmap = traits.ThetaMap(theta0, free, lo, hi, x, ridge=RIDGE)
            xs, phi, ridge = x[:, 0], np.concatenate([theta0[:3], SLOPES]), RIDGE
        for s in range(len(members)):  # the map's θ_s is the hand-written one
            assert np.allclose(tmap.theta(phi, s), _theta_by_hand(theta0, phi, xs[s]))
        fits = joint.fit_all(members, tmap, phi, ts, 400)
        assert fits is not None
        for s, (m, f) in enumerate(zip(members, fits, strict=True)):
            m.params, m.state, m.theta = f.params, f.state, tmap.theta(phi, s)
        fits, grad, loss, losses, msg = joint.hypergradient(members, tmap, phi, fits, ts)
        assert not msg, msg
        assert np.isclose(loss, joint.joint_loss(members, tmap, phi, fits)[0], rtol=1e-10)
        fd = _finite_differences(members, theta0, phi, xs, ridge, FD_STEP["tune_start"])
        rel = np.abs(grad - fd) / np.maximum(np.abs(fd), 1e-2 * np.linalg.norm(fd))
        print(f"{model}: implicit {grad}, fd {fd}, rel {rel}")
        assert np.all(rel <= 1e-3), rel


def test_trait_map_pullback_is_the_chain_rule():
    """J_sᵀh by the map equals the transpose of its Jacobian, measured column by column; a
    component clipped at a bound passes no gradient; the standardization uses the learning rows."""
    from birdflow.tuning import traits

    theta0 = np.array([-4.0, -5.0, 0.4, 0.0])
    free = np.array([True, True, True, False])
    lo, hi = np.array([-12.0, -14.0, 0.05, -8.0]), np.array([3.0, 2.0, 2.0, 4.0])
    x = traits.standardize(np.array([[0.0, 3.0], [1.0, 4.0], [2.0, 8.0], [9.0, 1.0]]), [0, 1, 2])
    assert np.allclose(x[:3].mean(0), 0) and np.allclose(x[:3].std(0), 1) and x[3, 0] > 1
    tmap = traits.ThetaMap(theta0, free, lo, hi, x)
    phi = tmap.start() + np.linspace(-0.3, 0.3, tmap.size)
    h = np.array([0.3, -1.2, 0.7, 5.0])
    for s in range(4):
        J = np.stack([tmap.theta(phi + e * 1e-6, s) - tmap.theta(phi, s)
                      for e in np.eye(tmap.size)], 1) / 1e-6
        assert np.allclose(tmap.pullback(phi, s, h), J.T @ h, atol=1e-6)
    phi[2] = 10.0  # dist_pow far above its bound for every species
    assert all(tmap.theta(phi, s)[2] == 2.0 and tmap.pullback(phi, s, h)[2] == 0 for s in range(4))
    assert tmap.names()[:4] == ["log_dist_weight", "log_ent_weight", "dist_pow",
                                "A_log_dist_weight_x0"]


def test_fitted_start_reproduces_the_species_theta():
    """A joint tune's start from the species' own θ: a trait map recovers θ̄ and A exactly when
    the θ are affine in the traits (ridge 0), shrinks A with a ridge, clips A to its bound;
    a pooled map starts at their mean. Frozen components are ignored."""
    from birdflow.tuning import traits

    theta0 = np.array([-4.0, -5.0, 0.4, 0.0])
    free = np.array([True, True, True, False])
    lo, hi = np.array([-12.0, -14.0, 0.05, -8.0]), np.array([3.0, 2.0, 2.0, 4.0])
    x = traits.standardize(np.array([[0.0, 3.0], [1.0, 4.0], [2.0, 8.0], [5.0, 1.0]]), range(4))
    mean, A = np.array([-3.0, -4.5, 0.6]), np.array([[0.2, -0.1], [0.0, 0.3], [-0.05, 0.1]])
    thetas = np.array([np.r_[mean + A @ xs, 7.0] for xs in x])
    exact = traits.ThetaMap(theta0, free, lo, hi, x).fitted_start(thetas)
    assert np.allclose(exact, np.r_[mean, A.ravel()])
    assert np.allclose([traits.ThetaMap(theta0, free, lo, hi, x).theta(exact, s) for s in
                        range(4)], np.c_[thetas[:, :3], np.zeros(4)])
    shrunk = traits.ThetaMap(theta0, free, lo, hi, x, ridge=1.0).fitted_start(thetas)
    assert np.allclose(shrunk[:3], mean) and np.linalg.norm(shrunk[3:]) < np.linalg.norm(A)
    bound = traits.ThetaMap(theta0, free, lo, hi, x, slope_bound=0.15).fitted_start(thetas)
    assert np.max(np.abs(bound[3:])) == 0.15
    pooled = traits.pooled(theta0, free, lo, hi, 4).fitted_start(thetas)
    assert np.allclose(pooled, thetas[:, :3].mean(0))


def test_joint_tune_of_one_species_is_birdflow_tune(tmp_path):
    """With one species and the pooled map the joint loop takes ``birdflow tune``'s steps
    (:func:`birdflow.tuning.search.run`, default settings): the same accepted θ and losses."""
    import jax
    import jax.numpy as jnp

    from birdflow.tuning import hypergrad, joint, newton, search, traits
    from birdflow.tuning.kernel_form import KernelForm

    with jax.enable_x64(True):
        prob, outer, theta, p0, ts = _problem("l2", "tune_start")
        ts = replace(ts, descent=replace(ts.descent, steps=3))
        space = KernelForm(prob)
        parts = search.Parts(fit=newton.make_newton(space, ts.inner, ts.solve.hvp),
                             implicit=hypergrad.make_implicit(space, outer, ts.solve),
                             outer=jax.jit(outer), monitors=(), space=space)
        y0 = space.start(prob.problem.targets, p0["z0"], theta)
        th = np.asarray(theta)
        free = np.array([True, True, True, False])
        lo, hi = np.array([-12.0, -14.0, 0.05, -8.0]), np.array([3.0, 2.0, 2.0, 4.0])
        res = joint.run([joint.Member("s", parts, y0, prob.init_state(), th, 60)],
                        traits.pooled(th, free, lo, hi, 1), ts)
        state = {"theta": jnp.asarray(th), "params": y0, "loss_state": prob.init_state(),
                 "v": jax.tree_util.tree_map(jnp.zeros_like, y0), "B": jnp.eye(4),
                 "radius": jnp.asarray(ts.descent.radius), "loss": jnp.asarray(np.inf),
                 "grad": jnp.zeros(4), "damping": jnp.asarray(ts.solve.damping),
                 "best": {"theta": jnp.asarray(th), "params": y0, "loss": jnp.asarray(np.inf)}}
        traj = {}
        search.run(ts, search.Parts(parts.fit, parts.implicit, parts.outer,
                                    (lambda p: 0.0, lambda p: 0.0), None, space),
                   state, traj, 0, free, lo, hi, tmp_path, lambda *a: None)
    mine = [r for r in res.trajectory if r["accepted"]]
    theirs = [i for i, a in enumerate(traj["accepted"]) if a]
    assert len(mine) == len(theirs) == 4  # the start and three accepted steps
    for r, i in zip(mine, theirs, strict=True):
        assert np.isclose(r["joint_loss"], traj["outer_loss"][i], rtol=1e-9)
        assert np.allclose([r["log_dist_weight"], r["log_ent_weight"], r["dist_pow"]],
                           [traj[n][i] for n in ("log_dist_weight", "log_ent_weight", "dist_pow")],
                           atol=1e-9)
    losses = [r["joint_loss"] for r in mine]
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
