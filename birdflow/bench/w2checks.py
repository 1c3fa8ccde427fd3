"""Accuracy and memory checks of one W2 benchmark case (used by :mod:`birdflow.bench.core`).

* :func:`tight_w2`: the W2 value from a tightly converged solve at the timed step's state;
* :func:`grad_vs_danskin`: a case's gradient against the envelope one (implicit, unroll);
* :func:`grad_vs_tight`: a case's training gradient against a tightly converged solve's (the
  bias of the amortised Sinkhorn budget, or of the threshold);
* :func:`w2_term_memory`: the compiled memory of the W2 term alone (matrix, online or grid cost).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from birdflow.losses.objective import (
    LossConfig,
    Problem,
    W2Config,
    _w2_term,
    epsilon_at,
    init_loss_state,
    objective,
    w2_cost_parts,
)
from birdflow.model.markov import WeekIndex


def tight_w2(before: dict, problem, index: WeekIndex, cfg: LossConfig) -> dict:
    """W2 at the timed step's parameters from a tightly converged solve (same epsilon)."""
    tight_threshold = 1e-7 if jax.config.jax_enable_x64 else 1e-5  # float32 floor ~3e-6
    w2 = dataclasses.replace(cfg.w2, threshold=tight_threshold, max_iterations=20000,
                             cache_target_self=False, warm_start=True)
    tcfg = dataclasses.replace(cfg, w2=w2)
    f = jax.jit(lambda p, prob, s, k: objective(p, prob, index, tcfg, s, k)[1][0])
    terms = f(before["params"], problem, before["loss_state"], before["step"])
    return {"w2_tight": float(terms["w2"]), "tight_iterations": float(terms["sinkhorn_iterations"]),
            "tight_threshold": tight_threshold}


def _flat_grad(params, problem, index: WeekIndex, cfg: LossConfig, loss_state, step):
    vg = jax.jit(jax.grad(lambda p, prob, s, k: objective(p, prob, index, cfg, s, k)[0]))
    g = vg(params, problem, loss_state, step)
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])


def grad_vs_tight(before: dict, problem, index: WeekIndex, cfg: LossConfig) -> dict:
    """This case's training gradient against a tightly converged solve's, same state.

    Returns ``grad_bias_vs_tight`` (||g - g*|| / ||g*||, all parameters) and
    ``grad_cos_vs_tight``; an amortised row's bias is what its fixed budget costs.
    """
    tight_threshold = 1e-7 if jax.config.jax_enable_x64 else 1e-5
    tcfg = dataclasses.replace(cfg, w2=dataclasses.replace(
        cfg.w2, threshold=tight_threshold, max_iterations=20000, iterations_per_step=None))
    args = (before["params"], problem, index)
    g = _flat_grad(*args, cfg, before["loss_state"], before["step"])
    ref = _flat_grad(*args, tcfg, before["loss_state"], before["step"])
    nr = jnp.linalg.norm(ref)
    return {"grad_bias_vs_tight": float(jnp.linalg.norm(g - ref) / nr),
            "grad_cos_vs_tight": float(g @ ref / (jnp.linalg.norm(g) * nr))}


def w2_term_memory(ds, index: WeekIndex, w2cfg: W2Config) -> dict:
    """Compiled memory of the W2 location term alone (value and gradient in mu), no model.

    Builds only the W2 part of the problem (targets, cost matrix or cell coordinates), so it
    runs at sizes whose dense model does not fit; ``w2_cost`` says which cost was used.
    """
    cfg = LossConfig(location="w2", w2=w2cfg)
    targets = jnp.asarray(index.slot_values(ds["distr"].values), jnp.float32)
    cc, unit, pts, top, boxes = w2_cost_parts(ds, index, w2cfg, jnp.float32)
    problem = Problem(targets, jnp.zeros((0, 0, 0)), jnp.asarray(cc, jnp.float32), unit,
                      w2_points=pts, w2_top=jnp.asarray(top, jnp.float32), w2_grid=boxes)
    state = init_loss_state(problem, index, cfg)

    def term(mu, prob, st):
        vals, _, _, new = _w2_term(mu, prob, index, w2cfg, st, epsilon_at(w2cfg, 1, prob.w2_unit),
                                       jnp.asarray(1, jnp.int32))
        return vals.sum(), new

    mu = jax.ShapeDtypeStruct(targets.shape, jnp.float32)
    compiled = jax.jit(jax.value_and_grad(term, has_aux=True)).lower(mu, problem, state).compile()
    m = compiled.memory_analysis()
    kind = "grid" if boxes is not None else "online" if pts is not None else "matrix"
    return {"w2_cost": kind,
            "w2_term_memory_bytes": None if m is None else int(
                m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)}


def grad_vs_danskin(before: dict, problem, index: WeekIndex, cfg: LossConfig) -> dict:
    """This case's gradient and the envelope (danskin) one at the same parameters and state.

    Returns ``grad_finite``, ``grad_rel_diff_vs_danskin`` (||g - g_danskin|| / ||g_danskin||,
    all parameters) and ``n_fallback`` (implicit week-solves that used the envelope gradient).
    """
    danskin = dataclasses.replace(cfg, w2=dataclasses.replace(cfg.w2, grad_mode="danskin"))
    grads, terms = {}, {}
    for key, c in (("case", cfg), ("danskin", danskin)):
        vg = jax.jit(jax.value_and_grad(
            lambda p, prob, s, k, c=c: objective(p, prob, index, c, s, k), has_aux=True))
        (_, (terms[key], _)), g = vg(before["params"], problem, before["loss_state"],
                                     before["step"])
        grads[key] = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
    diff = jnp.linalg.norm(grads["case"] - grads["danskin"]) / jnp.linalg.norm(grads["danskin"])
    return {"grad_finite": bool(jnp.isfinite(grads["case"]).all()),
            "grad_rel_diff_vs_danskin": float(diff),
            "n_fallback": float(terms["case"].get("n_fallback", 0.0))}
