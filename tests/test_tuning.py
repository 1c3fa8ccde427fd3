"""birdflow.tuning: bird split, differentiable interval log-likelihood, hypergradients, tune."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_bfdata

from birdflow.errors import ConfigError, DataError


def _intervals(ds, n=60, seed=0, max_lag=3):
    """Random scorable intervals on a BirdFlowData (ends inside their weeks' dynamic masks)."""
    rng = np.random.default_rng(seed)
    dyn = ds["dynamic_mask"].values
    w = dyn.shape[0]
    cyclic = bool(ds.attrs.get("cyclic", 1))
    rows = []
    while len(rows) < n:
        t1, lag = int(rng.integers(0, w)), int(rng.integers(1, max_lag + 1))
        if not cyclic and t1 + lag >= w:
            continue
        t2 = (t1 + lag) % w
        rows.append({"bird_id": f"b{len(rows) % 12:02d}", "t1": t1, "t2": t2, "lag": lag,
                     "cell1": int(rng.choice(np.flatnonzero(dyn[t1]))),
                     "cell2": int(rng.choice(np.flatnonzero(dyn[t2]))), "exclude": ""})
    return pd.DataFrame(rows)


def test_split_is_by_bird_deterministic_and_disjoint():
    from birdflow.tuning.split import split_birds

    iv = _intervals(make_tiny_bfdata(3, 4, n_weeks=6, seed=1), n=120)
    a, b = split_birds(iv, seed=3), split_birds(iv, seed=3)
    assert a.tuning_birds == b.tuning_birds and a.validation_birds == b.validation_birds
    assert not set(a.tuning_birds) & set(a.validation_birds)
    assert len(a.tuning_birds) + len(a.validation_birds) == 12
    assert len(a.tuning) + len(a.validation) == 120
    assert set(a.tuning["bird_id"]) == set(a.tuning_birds)
    assert split_birds(iv, seed=4).tuning_birds != a.tuning_birds  # the seed matters


def test_split_with_too_few_intervals_gives_the_counts():
    from birdflow.tuning.split import split_birds

    iv = _intervals(make_tiny_bfdata(3, 4, n_weeks=6, seed=1), n=30)
    with pytest.raises(DataError, match=r"tuning split has \d+ usable intervals from 6 birds \(of 30"):
        split_birds(iv, seed=0, min_intervals=20, source="t.csv")


def jax_and_numpy_ll(ds, index, params, iv):
    """Interval log-likelihoods of ``iv`` under ``params``: the JAX ones of the real intervals
    (in make_batch's order) and evaluation's numpy ``score_intervals`` in the same order."""
    from birdflow.evaluation.intervals import score_intervals
    from birdflow.model import markov
    from birdflow.model.fitted import BirdFlowModel
    from birdflow.tuning import likelihood

    batch = likelihood.make_batch(iv, index)
    ll = likelihood.interval_log_likelihoods(params, index, batch, batch.max_lag)
    _, M = markov.marginals(params, index)
    model = BirdFlowModel(data=ds, index=index, marginals=np.asarray(M), hyperparameters={},
                          loss_history={})
    ref = score_intervals(model, iv, win_prob=False)["ll"].to_numpy()
    # make_batch packs by start week in input order: rebuild that order
    order = np.concatenate([np.flatnonzero(iv["t1"].to_numpy() == t) for t in range(index.n_weeks)])
    return np.asarray(ll)[np.asarray(batch.weight) > 0], ref[order]


def test_log_likelihood_matches_the_numpy_metric():
    """Same intervals, same chain: JAX ll == intervals.score_intervals' ll (float64)."""
    import jax
    import jax.numpy as jnp

    from birdflow.model import markov
    from birdflow.tuning import likelihood

    with jax.enable_x64(True):
        ds = make_tiny_bfdata(3, 4, n_weeks=8, seed=2)
        ds.attrs["cyclic"] = 1
        index = markov.WeekIndex.from_bfdata(ds)
        params = markov.init_params(jax.random.PRNGKey(1), index, jnp.float64)
        iv = _intervals(ds, n=80, seed=1, max_lag=5)
        got, ref = jax_and_numpy_ll(ds, index, params, iv)
        np.testing.assert_allclose(got, ref, rtol=1e-10)
        batch = likelihood.make_batch(iv, index)
        mean = likelihood.mean_log_likelihood(params, index, batch, batch.max_lag)
        np.testing.assert_allclose(float(mean), ref.mean(), rtol=1e-10)


def test_repowered_cost_equals_the_cost_built_at_that_power():
    import jax

    from birdflow.losses.distance import repowered_cost, transition_cost
    from birdflow.model import markov

    ds = make_tiny_bfdata(3, 4, n_weeks=6, seed=1)
    index = markov.WeekIndex.from_bfdata(ds)
    d = ds["distance_km"].values
    base = transition_cost(d, index, 1.0)
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(repowered_cost(base, 1.0, 0.7)),
                                   transition_cost(d, index, 0.7), rtol=1e-12, atol=0)
        # derivative in the power: (d/100)^p log(d/100), centred differences, zeros stay zero
        g = jax.grad(lambda p: repowered_cost(base, 1.0, p).sum())(0.7)
        fd = (transition_cost(d, index, 0.7 + 1e-6).sum()
              - transition_cost(d, index, 0.7 - 1e-6).sum()) / 2e-6
        np.testing.assert_allclose(float(g), fd, rtol=1e-7)


def _tiny_problem(ent_weight=0.1):
    import jax
    import jax.numpy as jnp

    from birdflow.losses.objective import LossConfig
    from birdflow.model import markov
    from birdflow.tuning import inner, likelihood

    ds = make_tiny_bfdata(3, 4, n_weeks=6, seed=1)  # 11 cells, 5 transitions (not cyclic)
    cfg = LossConfig(dist_weight=0.05, ent_weight=ent_weight, dist_pow=0.5)
    prob = inner.Inner.build(ds, cfg, jnp.float64)
    batch = likelihood.make_batch(_intervals(ds, n=60, seed=0), prob.index)

    def outer(p):
        return -likelihood.mean_log_likelihood(p, prob.index, batch, batch.max_lag)

    theta = jnp.asarray(inner.theta_from_config(cfg))
    p0 = markov.init_params(jax.random.PRNGKey(0), prob.index, jnp.float64)
    return prob, outer, theta, p0


@pytest.mark.slow
def test_implicit_hypergradient_matches_finite_differences_and_unrolled():
    """Acceptance: float64, inner solved to a mass-scaled |grad| <= 1e-9 (Newton-CG; round-off of the low-mass rows floors it near 3e-10), every FD point refitted
    from the same start (the solution at θ); rel. err <= 1e-3 per component. Unrolled
    (mass-preconditioned) gradient descent approaches the implicit value as K grows.
    Measured here: 1.4e-5 absolute per component (norm ~2); unrolled K=1000 err 2-25 %.
    """
    import jax

    from birdflow.tuning import hypergrad, newton

    with jax.enable_x64(True):
        prob, outer, theta, p0 = _tiny_problem()
        fit = newton.make_newton(prob, newton.NewtonSettings(gtol=1e-9, max_steps=300))
        sol = fit(p0, theta, {})
        assert sol.converged, sol.grad_norm
        imp = hypergrad.make_implicit(prob, outer, hypergrad.SolveSettings(
            damping=0.0, rtol=1e-11, wtol=0.0, max_steps=2000))
        h = imp(sol.params, theta, {})
        assert h.ok and h.residual < 1e-9, h.message
        def fd(i, step):
            e = np.zeros(4)
            e[i] = step
            plus, minus = (fit(sol.params, theta + s * e, {}) for s in (1, -1))
            assert plus.converged and minus.converged
            return (float(outer(plus.params)) - float(outer(minus.params))) / (2 * step)

        # Richardson, (4 D(h/2) - D(h)) / 3, cancels the h² error of centred differences
        ref = np.array([(4 * fd(i, 5e-3) - fd(i, 1e-2)) / 3 for i in range(3)])
        # measured: 1.4e-5 absolute on every component (dist_weight's is small: 1.7e-3 of it)
        np.testing.assert_allclose(h.grad[:3], ref, rtol=0, atol=1e-3 * np.linalg.norm(ref))
        assert np.all(np.sign(h.grad[:3]) == np.sign(ref))
        assert h.grad[3] == 0.0  # L2: the W2 scale does not enter
        errs = []
        for k in (30, 300, 3000):
            u = np.asarray(hypergrad.make_unrolled(prob, outer, k, 1.0)(sol.params, theta, {}))
            errs.append(np.linalg.norm(u[:3] - h.grad[:3]) / np.linalg.norm(h.grad[:3]))
        assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs


class _Coarse:
    """An inner problem whose value is resolved only to ``quantum`` (its gradient is exact), as
    a W2 loss evaluated by Sinkhorn solves to a threshold is."""

    def __init__(self, prob, quantum):
        self.prob, self.quantum = prob, quantum

    def __getattr__(self, name):
        return getattr(self.prob, name)

    def value(self, params, theta, state):
        import jax
        import jax.numpy as jnp

        v, aux = self.prob.value(params, theta, state)
        coarse = jnp.round(v / self.quantum) * self.quantum
        return v + jax.lax.stop_gradient(coarse - v), aux

    def loss(self, params, theta, state):
        return self.value(params, theta, state)[0]

    @property
    def first_order(self):  # its gradients come from the coarse value too
        return self


def test_newton_judges_steps_below_the_loss_resolution_by_the_gradient():
    """With a loss resolved only to 1e-8, the line search cannot see the last steps' decrease:
    at the float64 resolution the fit stalls above gtol; at a resolution above the loss's it
    converges (the gradient norm judges those steps)."""
    import jax

    from birdflow.tuning import newton

    with jax.enable_x64(True):
        prob, _, theta, p0 = _tiny_problem()
        noisy = _Coarse(prob, 1e-8)
        kw = {"gtol": 1e-11, "max_steps": 60}
        exact = newton.make_newton(prob, newton.NewtonSettings(**kw))(p0, theta, {})
        stalled = newton.make_newton(noisy, newton.NewtonSettings(**kw))(p0, theta, {})
        judged = newton.make_newton(noisy, newton.NewtonSettings(resolution=1e-5, **kw))(
            p0, theta, {})
    assert exact.converged, exact.grad_norm
    assert not stalled.converged and stalled.grad_norm > 1e-10, stalled.grad_norm
    assert judged.converged and judged.grad_norm <= 1e-11, judged.grad_norm
    assert judged.steps <= exact.steps + 2, (judged.steps, exact.steps)


def test_newton_lengthens_cg_when_the_gradient_stops_halving(monkeypatch, caplog):
    """Directions cut short by the CG cap make Newton linear and can stall it (zoo_leapfrog at
    100 km stopped at |grad| 8.6e-5 with cg_max_steps 200). After ESCALATE iterations without a
    halved gradient the cap doubles, at most MAX_ESCALATIONS times: here cap 4 reaches 32 and
    the fit converges in 77 iterations; without escalation it is at 2.5e-6 after 150."""
    import logging

    import jax

    from birdflow.tuning import newton

    kw = {"gtol": 1e-9, "max_steps": 150, "cg_max_steps": 4}
    with jax.enable_x64(True):
        prob, _, theta, p0 = _tiny_problem(ent_weight=0.01)
        fit = newton.make_newton(prob, newton.NewtonSettings(**kw))
        with caplog.at_level(logging.DEBUG, logger="birdflow.tuning.newton"):
            longer = fit(p0, theta, {})
        caps = {int(r.getMessage().split(" of ")[1].split(",")[0]) for r in caplog.records
                if r.getMessage().startswith("newton ")}
        monkeypatch.setattr(newton, "MAX_ESCALATIONS", 0)
        fixed = fit(p0, theta, {})
    assert longer.converged and longer.steps < 100, (longer.steps, longer.grad_norm)
    assert caps == {4, 8, 16, 32}, caps
    assert not fixed.converged and fixed.grad_norm > 1e-7, fixed.grad_norm


@pytest.mark.slow
def test_hvp_modes_agree_and_cg_matches_a_dense_solve():
    """Forward-over-reverse HVP == centred FD of the gradient; preconditioned CG (gauge
    projected) == least-squares solve with the dense Hessian, on a tiny float64 problem."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from birdflow.tuning import curvature, hypergrad, newton

    with jax.enable_x64(True):
        prob, outer, theta, p0 = _tiny_problem()
        sol = newton.make_newton(prob, newton.NewtonSettings(gtol=1e-10))(p0, theta, {})
        v = curvature.project_gauge(jax.tree_util.tree_map(
            lambda x: jax.random.normal(jax.random.PRNGKey(3), x.shape, x.dtype), sol.params),
            curvature.gauge_mask(prob.index))
        a = curvature.make_hvp(prob.loss, "jvp")(sol.params, theta, {})(v)
        b = curvature.make_hvp(prob.loss, "fd", 1e-5)(sol.params, theta, {})(v)
        c = curvature.make_hvp(prob.loss, "linearize")(sol.params, theta, {})(v)
        fa, fb, fc = (ravel_pytree(x)[0] for x in (a, b, c))
        assert float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fa)) < 1e-7
        assert float(jnp.linalg.norm(fa - fc) / jnp.linalg.norm(fa)) < 1e-12
        flat, unravel = ravel_pytree(sol.params)
        sel = np.asarray(ravel_pytree(curvature.gauge_mask(prob.index))[0]) > 0
        H = np.asarray(jax.hessian(lambda f: prob.loss(unravel(f), theta, {}))(flat))[sel][:, sel]
        g_out = np.asarray(ravel_pytree(jax.grad(outer)(sol.params))[0])[sel]
        cross = np.asarray(jax.jacobian(lambda th: ravel_pytree(jax.grad(prob.loss)(
            sol.params, th, {}))[0])(theta))[sel]
        dense = -(cross.T @ np.linalg.lstsq(H, g_out, rcond=1e-13)[0])
        plain_steps = None
        for precondition in (False, True):
            h = hypergrad.make_implicit(prob, outer, hypergrad.SolveSettings(
                damping=0.0, rtol=1e-11, wtol=0.0, max_steps=3000,
                precondition=precondition))(sol.params, theta, {})
            assert h.ok
            np.testing.assert_allclose(h.grad, dense, rtol=1e-6, atol=1e-12)
            if precondition:
                assert h.cg_steps < plain_steps / 3  # measured 41 vs 345 at ent_weight 0.1
            plain_steps = h.cg_steps


def test_cg_stops_on_the_residual_norm_it_is_asked_for():
    """pcg's two stop rules on a badly scaled SPD system: plain ``||r||₂ <= rtol ||b||₂``, or
    ``scaled`` in the preconditioner's norm ``sqrt(rᵀM⁻¹r)`` (a Newton fit's mass-scaled
    gradient norm); each reports the residual in its own norm, recomputed from ``b − Ax``."""
    import jax
    import jax.numpy as jnp

    from birdflow.tuning import curvature

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n = 60
        d = 10.0 ** rng.uniform(-5, 0, n)  # masses over five decades, like the rows' mu P (1 - P)
        Q = rng.normal(size=(n, n)) / np.sqrt(n)
        A = np.sqrt(d)[:, None] * (np.eye(n) + 0.5 * Q @ Q.T) * np.sqrt(d)[None, :]
        b = jnp.asarray(A @ rng.normal(size=n))
        ident = lambda x: x  # noqa: E731
        op = curvature.Operator(lambda x: jnp.asarray(A) @ x, lambda x: x / jnp.asarray(d),
                                jnp.asarray(d), ident, ident)
        for scaled in (False, True):
            res = curvature.pcg(op, b, jnp.zeros_like(b), 1e-6, 500, scaled=scaled)
            r = np.asarray(b - jnp.asarray(A) @ res.x)
            if scaled:
                size = np.sqrt(r @ (r / d)) / np.sqrt(np.asarray(b) @ (np.asarray(b) / d))
            else:
                size = np.linalg.norm(r) / np.linalg.norm(np.asarray(b))
            assert size <= 1e-6 and int(res.steps) < 500, (scaled, size, int(res.steps))
            np.testing.assert_allclose(float(res.residual), size, rtol=1e-6)
            np.testing.assert_allclose(np.asarray(res.x), np.linalg.solve(A, np.asarray(b)),
                                       rtol=1e-3)


def test_settings_reject_bad_values():
    from birdflow.tuning.settings import tune_settings

    with pytest.raises(ConfigError, match="tune.free: log_w2_scale only exists for loss=w2"):
        tune_settings({"free": ["log_w2_scale"]}, "l2")
    with pytest.raises(ConfigError, match="tune.inner.solver: inner fits are Newton-CG"):
        tune_settings({"inner": {"solver": "lbfgs"}}, "w2")
    with pytest.raises(ConfigError, match="tune.bounds.dist_pow"):
        tune_settings({"bounds": {"dist_pow": [2, 1]}}, "l2")
    with pytest.raises(ConfigError, match="tune.learning_rate: the outer loop no longer takes Adam"):
        tune_settings({"learning_rate": 0.3}, "l2")
    with pytest.raises(ConfigError, match="tune.radius"):
        tune_settings({"radius": 5.0}, "l2")
    with pytest.raises(ConfigError, match="tune.inner.gtol"):
        tune_settings({"inner": {"gtol": 0}}, "l2")
    with pytest.raises(ConfigError, match="tune.inner.cg_norm: 'l1'; choose scaled or plain"):
        tune_settings({"inner": {"cg_norm": "l1"}}, "l2")
    s = tune_settings({}, "w2")
    assert s.solve.hvp == "linearize" and "log_w2_scale" in s.free and s.steps == 30
    assert s.inner.cg_norm == "scaled"


def test_w2_tunes_with_direct_solves_and_training_keeps_cg():
    """birdflow tune solves W2's optimality system directly (its products solve at one plan
    many times); a training config keeps CG, and an unknown solve is refused by name."""
    from birdflow.losses.config import LossConfig, W2Config
    from birdflow.tuning.problem import w2_for_tuning
    from birdflow.tuning.settings import tune_settings

    cfg = LossConfig(location="w2", w2=W2Config())
    assert cfg.w2.linear_solve == "cg"
    tuned = w2_for_tuning(cfg, tune_settings({}, "w2"))
    assert tuned.w2.linear_solve == "direct" and tuned.w2.grad_mode == "implicit"
    with pytest.raises(ConfigError, match="loss.w2.linear_solve"):
        LossConfig.from_mapping({"location": "w2", "w2": {"linear_solve": "lu"}})


def test_newton_gradients_solve_by_cg_and_agree_with_the_direct_solve():
    """A tune's gradients alone (Newton's value_grad) solve W2's implicit derivatives by CG:
    the direct solve's per-plan inversions pay off only over many products at one point. Both
    give the same gradient; an L2 problem is its own first-order problem."""
    import jax
    from test_tuning_hypergradient import _problem

    from birdflow.tuning.kernel_form import KernelForm

    with jax.enable_x64(True):
        prob, _, theta, p0, _ = _problem("w2", "tune_start")
        first = prob.first_order
        assert prob.cfg.w2.linear_solve == "direct" and first.cfg.w2.linear_solve == "cg"
        assert first.first_order is first
        assert KernelForm(prob).first_order.inner.cfg.w2.linear_solve == "cg"
        state = prob.init_state()
        g_direct = jax.grad(prob.loss)(p0, theta, state)
        g_cg = jax.grad(first.loss)(p0, theta, state)
        for key in g_direct:
            scale = float(np.max(np.abs(g_direct[key])))
            np.testing.assert_allclose(g_cg[key], g_direct[key], rtol=0, atol=1e-7 * scale)
        l2 = _problem("l2", "tune_start")[0]
        assert l2.first_order is l2


def _tune_cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir
    from test_train import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("tune", overrides=[
            f"run_dir={tmp_path / 'tune'}", "progress=false", "maps=false",
            f"data.root={tmp_path / 'data'}", "species.synthetic.size=0.5", "species.synthetic.n_tracks=40",
            "tune.steps=2", *overrides])


def test_no_tracks_names_the_keys():
    from omegaconf import OmegaConf

    from birdflow.tuning.problem import tracks_path

    cfg = OmegaConf.create({"species": {"code": "amewoo", "tracks": None}, "tracks": None})
    with pytest.raises(ConfigError, match=r"species.tracks.*tracks=<csv"):
        tracks_path(cfg)


@pytest.mark.slow
def test_tune_writes_an_ordinary_run_dir_and_resumes(tmp_path):
    """End to end on a coarse synthetic species: trajectory, split files, a model run dir that
    evaluate accepts (scored on the validation birds), resume of a finished tune is a no-op, and
    one that stopped at tune.steps goes on when resumed with a higher cap."""
    import json

    from birdflow.evaluation.evaluate import evaluate_run
    from birdflow.tuning.outer import tune

    res = tune(_tune_cfg(tmp_path))
    traj = res.trajectory
    acc = [i for i, a in enumerate(traj["accepted"]) if a]
    assert [traj["step"][i] for i in acc] == [0, 1, 2]
    assert len({round(traj["log_ent_weight"][i], 9) for i in acc}) == 3  # θ moved every step
    losses = [traj["outer_loss"][i] for i in acc]
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))  # downhill only
    assert all(traj["inner_converged"][i] for i in acc)  # every accepted fit is stationary
    info = json.loads((res.model_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["tracks"].endswith("validation_tracks.csv")
    metrics = evaluate_run(res.model_dir)["summary"]
    best = int(np.argmin(traj["outer_loss"]))
    # the saved model is the lowest-tuning-loss iterate; its validation ll is the logged one
    assert metrics["mean_ll"] == pytest.approx(traj["validation_ll"][best], rel=1e-6)
    # the trajectory's weakest weekly S&T correlation (tune.fit_penalty's) is evaluation's
    assert metrics["min_distr_cor"] == pytest.approx(traj["min_distr_cor"][best], rel=1e-6)
    tune_birds = set(open(res.tune_dir / "tuning_tracks.csv").read().split()[1:])
    val_birds = set(open(res.tune_dir / "validation_tracks.csv").read().split()[1:])
    assert {r.split(",")[0] for r in tune_birds}.isdisjoint({r.split(",")[0] for r in val_birds})
    again = tune(_tune_cfg(tmp_path, f"resume={res.tune_dir}"))
    np.testing.assert_array_equal(again.theta, res.theta)
    # a tune that stopped at its step cap goes on when resumed with a higher cap
    more = tune(_tune_cfg(tmp_path, "resume=true", "tune.steps=3"))
    steps = [s for s, a in zip(more.trajectory["step"], more.trajectory["accepted"], strict=True) if a]
    assert steps[:3] == [0, 1, 2] and steps[-1] == 3
    assert more.trajectory["outer_loss"][-1] <= losses[-1]


@pytest.mark.slow
def test_failed_linear_solve_stops_with_a_message(tmp_path):
    import json

    from birdflow.tuning.outer import TuningStopped, tune

    with pytest.raises(TuningStopped, match=r"outer step 0: the linear solve \(CG\) did not "
                                            r"converge in 1 steps"):
        tune(_tune_cfg(tmp_path, "tune.solve.max_steps=1", "tune.solve.rtol=1e-12"))
    info = json.loads((tmp_path / "tune" / "run.json").read_text())
    assert info["status"] == "failed" and "linear solve" in info["message"]
    assert "damping 1e-04" in info["message"]  # retried from 1e-8 up to tune.solve.max_damping


@pytest.mark.slow
def test_flat_loss_for_three_steps_ends_the_tune(tmp_path):
    """θ sliding along a flat valley (here: every step counts as flat, changes below 100
    standard errors of the tuning loss, and an unreachable tune.xtol) ends the loop after three
    accepted steps, named in run.json with the standard error it used. The last step solves no
    hypergradient (it would go unused); a tune killed after that step's checkpoint, before it
    finished, solves it first when resumed and goes on downhill."""
    import json

    import pandas as pd

    from birdflow.tuning.outer import tune

    overrides = ("tune.steps=10", "tune.ftol=0", "tune.se_tol=100", "tune.xtol=1e-300",
                 "evaluate=false")
    tune(_tune_cfg(tmp_path, *overrides))
    info_path = tmp_path / "tune" / "run.json"
    info = json.loads(info_path.read_text())
    se = info["tuning_loss_se"]
    assert 0 < se < 1  # nats; the standard deviation of interval lls over √(intervals)
    assert info["ended"].startswith(f"converged: tuning loss changed by less than {100 * se:.2g}")
    traj = pd.read_csv(tmp_path / "tune" / "trajectory.csv")
    acc = traj[traj["accepted"] == 1]
    assert len(acc) == 4  # step 0 and three flat steps
    losses = acc["outer_loss"].to_numpy()
    assert np.all(np.diff(losses) <= 0)  # accepted steps never raise the tuning loss
    assert np.all(np.isfinite(acc["hypergrad_norm"].to_numpy()[:-1]))
    assert np.isnan(acc["hypergrad_norm"].iloc[-1]) and acc["cg_steps"].iloc[-1] == 0
    # killed between the last checkpoint and the end: resumed, it solves the missing
    # hypergradient, then takes steps from it (three more flat ones end it again)
    info["status"] = "running"
    info_path.write_text(json.dumps(info))
    res = tune(_tune_cfg(tmp_path, *overrides, "resume=true"))
    acc = [i for i, a in enumerate(res.trajectory["accepted"]) if a]
    assert [res.trajectory["step"][i] for i in acc] == list(range(7))
    assert all(np.isfinite(res.trajectory["hypergrad_norm"][i]) for i in acc[4:6])
    assert res.trajectory["outer_loss"][acc[-1]] <= losses[-1]


def test_failed_solve_is_retried_with_ten_times_the_damping_up_to_the_cap():
    from types import SimpleNamespace

    from birdflow.tuning.hypergrad import Hypergradient
    from birdflow.tuning.search import Parts, _hypergradient

    calls = []

    def implicit(params, theta, state, v0, damping, blocks=None):  # needs damping >= 1e-2
        calls.append((damping, v0, blocks))
        ok = damping >= 1e-2 * (1 - 1e-9) or blocks == "blocks that work"
        return Hypergradient(np.ones(4), 1.0, {"v": damping}, 7, 1e-9 if ok else 0.5, ok,
                             "" if ok else "the linear solve (CG) did not converge", damping)

    implicit.blocks = lambda params, theta, state: None  # the logits: no potentials to block
    res = SimpleNamespace(params={}, state={}, blocks=None)
    parts = Parts(fit=None, implicit=implicit, outer=None, monitors=())
    h = _hypergradient(parts, res, np.zeros(4), {"v": "warm"}, 1e-4, 1e-2)
    assert h.ok and h.damping == pytest.approx(1e-2)
    assert [c[0] for c in calls] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert calls[0][1] == {"v": "warm"} and calls[1][1] is None  # a retry starts CG from zero
    calls.clear()
    h = _hypergradient(parts, res, np.zeros(4), {"v": None}, 1e-4, 1e-3)  # the cap stops it
    assert not h.ok and h.damping == pytest.approx(1e-3) and len(calls) == 2

    # the kernel form: a failed solve is first solved again with the week blocks, at the same
    # damping and from the same start; the blocks stay on the fit for its later solves
    calls.clear()
    implicit.blocks = lambda params, theta, state: "blocks that work"
    h = _hypergradient(parts, res, np.zeros(4), {"v": "warm"}, 1e-4, 1e-2)
    assert h.ok and h.damping == pytest.approx(1e-4) and res.blocks == "blocks that work"
    assert [(c[0], c[2]) for c in calls] == [(1e-4, None), (1e-4, "blocks that work")]
    assert calls[1][1] == {"v": "warm"}
    calls.clear()  # a fit that built blocks hands them to the first solve
    h = _hypergradient(parts, res, np.zeros(4), None, 1e-4, 1e-2)
    assert h.ok and [c[2] for c in calls] == ["blocks that work"]


@pytest.mark.slow
def test_non_finite_hypergradient_stops_and_keeps_the_last_good_theta(tmp_path, monkeypatch):
    """A NaN in the hypergradient at outer step 1 (injected into the real solve's result) stops
    the loop with a message naming it; θ and the model of step 0 are kept."""
    import json

    from birdflow.tuning import hypergrad
    from birdflow.tuning.outer import TuningStopped, tune

    real = hypergrad.make_implicit

    def poisoned(*args, **kwargs):
        implicit = real(*args, **kwargs)
        count = {"n": 0}

        def wrapped(*a, **k):
            h = implicit(*a, **k)
            count["n"] += 1
            if count["n"] == 2:
                h.grad = np.array([np.nan, 0.0, 0.0, 0.0])
                h.ok, h.message = False, f"non-finite hypergradient {h.grad.tolist()}"
            return h
        return wrapped

    monkeypatch.setattr(hypergrad, "make_implicit", poisoned)
    with pytest.raises(TuningStopped, match=r"outer step 1: non-finite hypergradient \[nan"):
        tune(_tune_cfg(tmp_path))
    info = json.loads((tmp_path / "tune" / "run.json").read_text())
    traj = (tmp_path / "tune" / "trajectory.csv").read_text().splitlines()
    assert info["status"] == "stopped" and "non-finite hypergradient" in info["message"]
    rows = [dict(zip(traj[0].split(","), r.split(","), strict=True)) for r in traj[1:]]
    assert [r["step"] for r in rows if r["accepted"] == "1"] == ["0"]  # step 1 was not taken
    step0 = rows[0]
    np.testing.assert_allclose(info["theta"][:3], [float(step0[k]) for k in
                               ("log_dist_weight", "log_ent_weight", "dist_pow")], rtol=1e-12)
    assert (tmp_path / "tune" / "model" / "model.nc").exists()


def test_fit_penalty_by_hand_and_its_gradient():
    """Weekly correlations equal numpy's over the active cells; the penalty is zero above
    min_cor, weight * sum gap^2 below it, and its gradient matches centred differences."""
    import jax
    import jax.numpy as jnp

    from birdflow.model import markov
    from birdflow.tuning.penalty import FitPenalty, make_fit_penalty

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        dyn = rng.random((4, 7)) < 0.8
        dyn[:, :3] = True
        index = markov.WeekIndex.from_dynamic_mask(dyn, cyclic=True)
        params = markov.init_params(jax.random.PRNGKey(1), index, jnp.float64)
        targets = jnp.asarray(index.slot_values(rng.random((4, 7))), jnp.float64)
        mu = np.asarray(markov.marginals(params, index)[0])
        cors = [np.corrcoef(mu[t][index.valid[t]], np.asarray(targets)[t][index.valid[t]])[0, 1]
                for t in range(4)]
        _, cor = make_fit_penalty(index, targets, FitPenalty())(params)
        np.testing.assert_allclose(cor, cors, rtol=1e-12)
        assert float(make_fit_penalty(index, targets, FitPenalty())(params)[0]) == 0.0
        above = make_fit_penalty(index, targets, FitPenalty(min_cor=min(cors) - 0.01))
        assert float(above(params)[0]) == 0.0
        level = float(np.sort(cors)[2])  # two weeks below
        pen = make_fit_penalty(index, targets, FitPenalty(min_cor=level, weight=3.0))
        want = 3.0 * sum(max(0.0, level - c) ** 2 for c in cors)
        assert float(pen(params)[0]) == pytest.approx(want, rel=1e-12) and want > 0
        f = lambda p: pen(p)[0]  # noqa: E731
        g = jax.grad(f)(params)["Z"]
        h = 1e-6
        for idx in [(0, 0, 1), (1, 2, 0), (3, 1, 2)]:
            e = jnp.zeros_like(params["Z"]).at[idx].set(h)
            fd = (f({**params, "Z": params["Z"] + e}) - f({**params, "Z": params["Z"] - e})) / (2 * h)
            assert float(g[idx]) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)
