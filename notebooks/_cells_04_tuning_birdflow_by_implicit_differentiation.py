# %% [markdown]
# # 04 · Tuning BirdFlow's hyperparameters by implicit differentiation
#
# Notebook 01 tuned the Lasso penalty α by differentiating the solver's fixed point. BirdFlow is
# the same picture at a larger scale:
#
# | | Lasso (01) | BirdFlow (`birdflow tune`) |
# |---|---|---|
# | inner variables w | regression weights | transition logits (z₀, Z_t), ~350 k on the synthetic species |
# | inner loss | squared error + α‖w‖₁ | location (L2 or W2) + e^θ₀·distance(θ₂) − e^θ₁·entropy (+ W2 scale e^θ₃) |
# | outer loss | validation error | −mean interval log-likelihood of the *tuning* birds |
# | hypergradient | restricted to the support | matrix-free: HVPs + preconditioned CG + one VJP |
#
# At a stationary point ∇_w L_in(w*, θ) = 0, so dw*/dθ = −H⁻¹ ∂²_{wθ} L_in and
#
# dL_out/dθ = −∂²_{θw} L_in · H⁻¹ ∇_w L_out.
#
# Two things are new. The softmax makes L_in flat along "add a constant to a row of logits",
# so H is singular; we work in the gauge where every row of logits has mean zero (those
# directions are orthogonal to both ∇_w L_out and the cross term, so nothing is lost). And rows
# of the chain that carry little mass have little curvature, so H is badly conditioned; a
# diagonal preconditioner mu_t(i)·P(1 − P) fixes most of that. Everything below runs in float64
# on a 6-week, 11-cell grid in well under a minute.

# %%
%matplotlib inline
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

jax.config.update("jax_enable_x64", True)
from birdflow.data.bfdata import make_bfdata
from birdflow.data.weeks import week_dates
from birdflow.losses.objective import LossConfig
from birdflow.model import markov
from birdflow.tuning import descent, hypergrad, inner, likelihood, newton

# a 3 x 4 grid, 6 weeks, random abundance with ~20 % of cells outside each week's mask
rng = np.random.default_rng(1)
a = rng.random((6, 3, 4))
a[rng.random(a.shape) < 0.2] = 0.0
a[:, 0, 0] = np.nan
ds = make_bfdata(a, np.arange(4) * 1e5 + 5e4, 3.5e6 - np.arange(3) * 1e5, "ESRI:102008",
                 np.arange(1, 7), week_dates(2022)[:6], species_code="tiny", version_year=2022,
                 res_km=100.0, source="tiny")
rng = np.random.default_rng(0)
dyn = ds["dynamic_mask"].values
rows = []
while len(rows) < 60:  # random "tracked birds": intervals of 1-3 weeks inside the masks
    t1, lag = int(rng.integers(0, 6)), int(rng.integers(1, 4))
    if t1 + lag < 6:
        rows.append({"t1": t1, "t2": t1 + lag, "lag": lag,
                     "cell1": rng.choice(np.flatnonzero(dyn[t1])),
                     "cell2": rng.choice(np.flatnonzero(dyn[t1 + lag]))})
cfg = LossConfig(dist_weight=0.05, ent_weight=0.1, dist_pow=0.5)
prob = inner.Inner.build(ds, cfg, jnp.float64)
batch = likelihood.make_batch(pd.DataFrame(rows), prob.index)
outer = lambda p: -likelihood.mean_log_likelihood(p, prob.index, batch, batch.max_lag)  # noqa: E731
theta = jnp.asarray(inner.theta_from_config(cfg))
p0 = markov.init_params(jax.random.PRNGKey(0), prob.index, jnp.float64)
fit = newton.make_newton(prob, newton.NewtonSettings(gtol=1e-11, max_steps=200))
sol = fit(p0, theta, {})
print(f"inner fit: {sol.steps} Newton-CG steps ({sol.hvps} Hessian-vector products), "
      f"mass-scaled |∇_w L_in| = {sol.grad_norm:.1e}")

# %% [markdown]
# ## The hypergradient against finite differences
# Each finite-difference point is refitted tightly from the same start (the solution at θ).

# %%
implicit = hypergrad.make_implicit(prob, outer, hypergrad.SolveSettings(damping=0.0, rtol=1e-10, wtol=0.0, max_steps=2000))
h = implicit(sol.params, theta, {})
names = ["log dist_weight", "log ent_weight", "dist_pow"]
fd = []
for i in range(3):
    e = np.zeros(4); e[i] = 1e-3
    fd.append((float(outer(fit(sol.params, theta + e, {}).params))
               - float(outer(fit(sol.params, theta - e, {}).params))) / 2e-3)
print(f"CG steps {h.cg_steps}, relative residual {h.residual:.1e}")
for n, a, b in zip(names, h.grad, fd):
    print(f"{n:16s} implicit {a:+.6f}   finite differences {b:+.6f}   rel. err {abs(a - b) / abs(b):.1e}")

# %% [markdown]
# ## Unrolling as K grows
# Backpropagating through the last K (mass-preconditioned) gradient steps converges to the
# implicit value, with memory that grows with K; the implicit one needs no stored trajectory.

# %%
for k in (10, 100, 1000):
    u = np.asarray(hypergrad.make_unrolled(prob, outer, k, 1.0)(sol.params, theta, {}))[:3]
    print(f"K = {k:4d}: {np.round(u, 5)}   rel. err vs implicit {np.linalg.norm(u - h.grad[:3]) / np.linalg.norm(h.grad[:3]):.2e}")

# %% [markdown]
# ## Tuning: downhill steps on θ with implicit hypergradients, over the grid's surface
# The outer loss over a 5 × 5 grid of (log dist_weight, log ent_weight) at dist_pow 0.5,
# each point fitted from the same start, and the path `birdflow tune`'s step rule takes from
# the top-left corner: a BFGS direction in a trust radius, each trial an inner refit, accepted
# only if the tuning loss fell (`birdflow.tuning.descent`).

# %%
t0 = time.perf_counter()
ld, le = np.linspace(-6, 0, 5), np.linspace(-6, 0, 5)
surface = np.array([[float(outer(fit(sol.params, jnp.array([a, b, 0.5, 0.0]), {}).params)) for a in ld] for b in le])
free, lo, hi = np.array([True, True, False, False]), np.full(4, -12.0), np.full(4, 3.0)
th, B, radius = np.array([-5.5, -5.5, 0.5, 0.0]), np.eye(4), 0.5
r = fit(sol.params, jnp.asarray(th), {})
g = implicit(r.params, jnp.asarray(th), {})
path = [(th[0], th[1], g.outer_loss)]
for step in range(12):
    grad = np.where(free, g.grad, 0.0)
    for trial in range(8):
        d = descent.direction(B, grad, th, free, lo, hi, radius)
        new = np.clip(th + d, lo, hi)
        trial_fit = fit(r.params, jnp.asarray(new), {})
        if descent.accept(float(outer(trial_fit.params)), g.outer_loss, grad, new - th, 1e-4):
            break
        radius = np.abs(new - th).max() / 4
    h = implicit(trial_fit.params, jnp.asarray(new), {})
    B = descent.bfgs_update(B, new - th, np.where(free, h.grad, 0.0) - grad)
    radius = min(2 * radius, 2.0) if np.abs(d).max() >= radius * (1 - 1e-9) else radius
    th, r, g = new, trial_fit, h
    path.append((th[0], th[1], g.outer_loss))
path = np.array(path)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
cs = ax[0].contourf(ld, le, surface, 20); fig.colorbar(cs, ax=ax[0], label="−mean ll (tuning)")
ax[0].plot(path[:, 0], path[:, 1], "wo-"); ax[0].set(xlabel="log dist_weight", ylabel="log ent_weight")
ax[1].plot(path[:, 2], "o-"); ax[1].axhline(surface.min(), ls="--", c="k", label="best grid point")
ax[1].set(xlabel="outer step", ylabel="−mean ll (tuning)"); ax[1].legend()
assert np.all(np.diff(path[:, 2]) <= 0), "an accepted step never raises the tuning loss"
print(f"grid best {surface.min():.4f}, tuned {path[-1, 2]:.4f} after {len(path) - 1} outer steps ({time.perf_counter() - t0:.0f} s)")

# %% [markdown]
# ## Implicit vs unrolled: time and memory
# `python -m birdflow.bench.hypergrad` measures this at the real size (docs/benchmarks/tuning.md);
# here a 30-cell version: the implicit solve's memory does not depend on K,
# the unrolled one's grows linearly.

# %%
from birdflow.bench.hypergrad import run

table = pd.DataFrame(run(cells=30, ks=[10, 30, 100], repeats=1, cg_steps=50, n_intervals=300))
table["memory MiB"] = table["memory_bytes"] / 2**20
table[["case", "K", "cg_steps", "median_s", "memory MiB"]]
