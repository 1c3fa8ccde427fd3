"""The benchmark command, and the W2 fast paths against the plain ones (no timing assertions)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_bfdata, w2_objective_steps

from birdflow.bench import core as bench
from birdflow.errors import ConfigError
from birdflow.losses import LossConfig, W2Config, init_loss_state, make_problem, objective
from birdflow.losses.location import SlotGeometry, slot_cost
from birdflow.model.markov import WeekIndex, init_params

# Tiny grid: epsilon large enough (0.65 one-cell costs) and threshold tight enough
# that every Sinkhorn solve converges, so fast and plain paths must agree to solver accuracy.
TIGHT = W2Config(epsilon_cells=0.65, threshold=1e-9, max_iterations=5000, iterations_per_step=None)
PLAIN = dataclasses.replace(TIGHT, cache_target_self=False, symmetric=False, shared_cost=False,
                            week_batch=0)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_bench_runs_tiny_and_prints_json_lines(capsys):
    # 100 cells (the default blur, 2 one-cell costs; the implicit system is well posed)
    # (the like-for-like row runs 5,000 reference iterations: test_bench_reference_case_runs)
    rows = bench.main(["--cells", "100", "--cases", "l2,danskin,implicit", "--repeats", "2",
                       "--warmup", "1"])
    out = capsys.readouterr().out
    lines = _json_lines(out)
    info = lines[0]["device_info"]
    assert info["backend"] == jax.default_backend() and info["bandwidth_GBps"] > 0
    by_case = {r["case"]: r for r in lines[1:]}
    assert set(by_case) == {"l2", "w2-danskin", "w2-implicit"}
    assert bench.cases([], ["plain"])[0][1].week_batch == 0  # variants switch settings off
    assert [r["case"] for r in rows] == [r["case"] for r in lines[1:]]
    for r in by_case.values():
        assert r["weeks"] == 52 and r["n_max"] > 0
        assert r["step_ms"] > 0 and r["compile_s"] > 0 and r["memory_bytes"] > 0
        assert np.isfinite(r["terms"]["total"])
    assert by_case["l2"]["ratio_vs_l2"] == 1.0 and by_case["l2"]["l2_byte_bound_ms"] > 0
    w = by_case["w2-danskin"]
    # warm-started at threshold 1e-3: the value within 1e-3 of a tightly converged solve
    assert w["sinkhorn_iterations"] >= 1 and w["w2_rel_err"] < 1e-3
    imp = by_case["w2-implicit"]
    assert imp["grad_finite"] and imp["n_fallback"] == 0
    # the default is amortised (10 iterations per step): the implicit gradient corrects for
    # the marginal error those leave, which is larger than a converged solve's (measured 0.14
    # here; < 1e-2 with iterations_per_step null, tests/test_w2_implicit.py at n = 1000)
    assert 0 < imp["grad_rel_diff_vs_danskin"] < 0.3
    assert "grad_rel_diff_vs_danskin" not in w
    # the default (amortised) danskin row: its gradient against a tight solve's, W2 memory
    k = W2Config().iterations_per_step  # k iterations, k more at a time while above tolerance
    assert k is not None and w["sinkhorn_iterations"] >= k and w["sinkhorn_iterations"] % k == 0
    assert 0 < w["grad_bias_vs_tight"] < 0.2 and 0.98 < w["grad_cos_vs_tight"] <= 1.0 + 1e-6
    assert w["w2_term_memory_bytes"] > 0 and w["w2_cost"] == "grid"  # the default: sqeuclidean, danskin, a raster grid
    assert f"{imp['grad_rel_diff_vs_danskin']:.1e}" in out  # the table shows the difference


@pytest.mark.slow
def test_bench_reference_case_runs(capsys):
    bench.main(["--cells", "12", "--cases", "danskin,like,reference", "--repeats", "1", "--warmup", "1",
                "--no-accuracy"])
    rows = {r["case"]: r for r in _json_lines(capsys.readouterr().out)[1:]}
    ref = rows["reference"]
    assert np.isfinite(ref["w2"]) and ref["sinkhorn_iterations"] >= 1
    assert ref["ref_over_ours"] == pytest.approx(ref["step_ms"] / rows["w2-danskin"]["step_ms"])
    assert ref["ref_over_like"] == pytest.approx(ref["step_ms"] / rows[bench.LIKE]["step_ms"])
    like = rows[bench.LIKE]
    ds = bench.synthetic_bfdata(12)
    like_cfg = bench.like_for_like_config(ds["distance_km"].values, WeekIndex.from_bfdata(ds),
                                          float(ds.attrs["res_km"]))
    unit = make_problem(ds, WeekIndex.from_bfdata(ds), LossConfig(location="w2", w2=like_cfg)).w2_unit
    assert like["terms"]["epsilon"] == pytest.approx(like_cfg.epsilon_cells * float(unit), rel=1e-5)


def test_like_for_like_row_solves_the_reference_problem():
    """The like row's problem is the reference's: the same per-week cost up to one scale
    factor, epsilon in the same units, threshold and iteration cap."""
    from birdflow.bench import reference as ref

    ds = bench.synthetic_bfdata(30)
    index = WeekIndex.from_bfdata(ds)
    cfg = ref.like_for_like_config(ds["distance_km"].values, index)
    assert (cfg.threshold, cfg.max_iterations, cfg.debiased) == (5e-2, 5000, False)
    problem = make_problem(ds, index, LossConfig(location="w2", w2=cfg))
    costs = ref.reference_costs(ds["distance_km"].values, index)
    scales, eps_ref = [], []
    for t, w in enumerate(index.week_of_marginal()):
        cells = index.slot_cell[w][index.valid[w]]
        ours = np.asarray(problem.w2_cell_cost)[np.ix_(cells, cells)]
        off = ~np.eye(len(cells), dtype=bool)
        scales.append(costs[t][off] / ours[off])
        eps_ref.append(0.01 * 0.05 * np.std(costs[t]))  # 0.01 x OTT's default, 0.05 std(cost)
    scale = np.concatenate(scales)
    np.testing.assert_allclose(scale, scale[0], rtol=1e-5)  # one factor for every week
    eps = np.asarray(eps_ref) / scale[0]
    assert np.median(eps) == pytest.approx(cfg.epsilon_cells * float(problem.w2_unit), rel=1e-5)
    assert eps.max() / eps.min() < 1.5  # per-week epsilons the median stands for


def test_unknown_case_or_variant_is_a_one_line_error():
    with pytest.raises(SystemExit, match="--cases: unknown case 'l3'"):
        bench.cases(["l3"], [])
    with pytest.raises(SystemExit, match="--variants: unknown variant 'fast'"):
        bench.cases([], ["fast"])


@pytest.fixture(scope="module")
def tiny():
    ds = make_tiny_bfdata(n_rows=3, n_cols=4, n_weeks=5, seed=4, zero_frac=0.3)
    return ds, WeekIndex.from_bfdata(ds)


def _value_grad(tiny, w2cfg: W2Config, steps=(0, 0)):
    """Objective terms and gradient after calling it at each step in ``steps`` (state carried)."""
    return w2_objective_steps(*tiny, w2cfg, steps)


@pytest.fixture(scope="module")
def plain(tiny):
    return _value_grad(tiny, PLAIN, steps=(0,))


def _assert_same(fast, plain, rtol=1e-6):
    (t_fast, g_fast, _), (t_plain, g_plain, _) = fast, plain
    for k in ("w2", "total", "l2"):
        np.testing.assert_allclose(t_fast[k], t_plain[k], rtol=rtol, err_msg=k)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9 * float(np.abs(b).max()))


@pytest.mark.parametrize("change", [
    {"cache_target_self": False},
    {"symmetric": False},
    {"shared_cost": False},
    {"week_batch": 1},
    {"week_batch": 2},
    {"inner_iterations": 3},
    {"momentum": 1.0},
], ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_each_fast_path_matches_the_plain_solve(tiny, plain, change):
    """Defaults (all fast paths) with one switched back give the plain loss and gradient."""
    _assert_same(_value_grad(tiny, dataclasses.replace(TIGHT, **change)), plain)


def test_cached_target_term_equals_recomputed_and_is_reused(tiny, plain):
    first = _value_grad(tiny, TIGHT, steps=(0,))
    again = _value_grad(tiny, TIGHT, steps=(0, 0))  # second call reads W(s, s) from the state
    _assert_same(first, plain)
    _assert_same(again, plain)
    assert float(again[2]["ref_eps"]) == pytest.approx(again[0]["epsilon"])
    assert again[0]["epsilon"] == pytest.approx(TIGHT.epsilon_cells / 13)  # one-cell cost 1/13
    w = again[2]["ref"].shape[0]
    assert again[0]["sinkhorn_iterations"] > 0 and first[2]["f"].shape[0] == 3 * w


def test_cached_target_term_keeps_its_convergence_flags(tiny):
    """W(s, s) stopped at max_iterations: the cached term still counts as unconverged on the
    steps that reuse it (it used to be reported converged unconditionally)."""
    few = dataclasses.replace(TIGHT, max_iterations=10)  # threshold 1e-9: nothing converges
    terms0, _, state = _value_grad(tiny, few, steps=(0,))
    again, _, state2 = _value_grad(tiny, few, steps=(0, 0))
    ref_unconverged = int((~np.asarray(state["ref_converged"])).sum())
    assert ref_unconverged > 0  # the target's self-transport did not converge in 10 iterations
    np.testing.assert_array_equal(state2["ref_converged"], state["ref_converged"])
    # step 1 reuses W(s, s): its unconverged weeks are still counted (plus W(mu, s) ones)
    assert terms0["n_unconverged"] == 3 * len(state["ref_converged"])  # step 0: no term did
    assert again["n_unconverged"] >= ref_unconverged + 1


def test_cache_is_refreshed_when_epsilon_changes(tiny):
    sched = dataclasses.replace(TIGHT, epsilon_cells_start=2.6, epsilon_decay_steps=4)
    cached = _value_grad(tiny, sched, steps=(0, 1, 2))
    fresh = _value_grad(tiny, dataclasses.replace(sched, cache_target_self=False), steps=(0, 1, 2))
    _assert_same(cached, fresh)
    assert float(cached[2]["ref_eps"]) == pytest.approx(float(cached[0]["epsilon"]))


@pytest.mark.parametrize("grad_mode", ["danskin", "implicit"])
def test_warm_start_at_the_default_threshold_with_moving_parameters(tiny, grad_mode):
    """Step 0 at params p0, step 1 at p1 = p0 + a step: the warm-started solve (from step 0's
    potentials) and a cold one at p1 both agree with a tightly converged solve at p1, within
    what threshold 1e-3 allows, on the value and the gradient; warm needs fewer iterations."""
    ds, index = tiny
    # default threshold 1e-3, solved to it every step (amortised steps: tests/test_w2_fast.py)
    loose = W2Config(epsilon_cells=0.65, grad_mode=grad_mode, iterations_per_step=None)
    assert loose.threshold == W2Config().threshold == 1e-3
    tight = dataclasses.replace(loose, threshold=1e-9, max_iterations=20000)
    with jax.enable_x64(True):
        p0 = init_params(jax.random.key(1), index, dtype=jnp.float64)
        noise = jax.tree.map(lambda x: 0.3 * jax.random.normal(jax.random.key(2), x.shape), p0)
        p1 = jax.tree.map(jnp.add, p0, noise)

        def run(cfg, params, state=None, step=1):
            lc = LossConfig(location="w2", w2=cfg)
            problem = make_problem(ds, index, lc)
            state = init_loss_state(problem, index, lc) if state is None else state
            (_, (terms, state)), g = jax.value_and_grad(
                lambda p: objective(p, problem, index, lc, state, jnp.int32(step)),
                has_aux=True)(params)
            return terms, jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]), state

        _, _, state0 = run(loose, p0, step=0)
        warm = run(loose, p1, state0)
        cold = run(loose, p1)
        ref = run(tight, p1)
    moved = float(jnp.linalg.norm(run(loose, p0)[1] - ref[1]) / jnp.linalg.norm(ref[1]))
    assert moved > 0.05  # the parameters really changed the gradient
    # measured: values within 1e-7 (warm) / 5e-7 (cold); gradients 1.8e-4 / 1.4e-4 from the
    # converged one with the envelope gradient, 4e-8 / 1e-7 with the implicit one (it corrects
    # for the marginal error the threshold leaves)
    grad_tol = {"danskin": 1e-3, "implicit": 1e-5}[grad_mode]
    for name, (terms, g, _) in {"warm": warm, "cold": cold}.items():
        assert int(terms["n_unconverged"]) == 0, name
        np.testing.assert_allclose(terms["w2"], ref[0]["w2"], rtol=1e-5, err_msg=name)
        rel = float(jnp.linalg.norm(g - ref[1]) / jnp.linalg.norm(ref[1]))
        assert rel < grad_tol, (name, rel)
    assert warm[0]["sinkhorn_iterations"] < cold[0]["sinkhorn_iterations"]


def test_slot_geometry_cost_equals_gathered_cost(tiny):
    ds, index = tiny
    problem = make_problem(ds, index, LossConfig(location="w2"))
    slots = index.slot_cell[index.week_of_marginal()]
    gathered = slot_cost(problem.w2_cell_cost, slots)
    for t in range(slots.shape[0]):
        geom = SlotGeometry(problem.w2_cell_cost, jnp.asarray(slots[t]), epsilon=0.1)
        np.testing.assert_array_equal(geom.cost_matrix, gathered[t])
        assert geom.shape == gathered[t].shape


def test_bad_week_batch_names_the_key():
    with pytest.raises(ConfigError, match=r"loss\.w2\.week_batch"):
        LossConfig.from_mapping({"location": "w2", "w2": {"week_batch": -2}})
    with pytest.raises(ConfigError, match=r"loss\.w2\.inner_iterations"):
        LossConfig.from_mapping({"location": "w2", "w2": {"inner_iterations": 0}})


def test_sparse_bench_rows_compare_dense_and_sparse_steps():
    """``python -m birdflow.bench.sparse``: one dense and one sparse row per size; the sparse
    row's parameters are the index's count; a dense step over --max-run-gb is compiled from
    shapes only and reported as an estimate (no step time), and its table row says so."""
    from birdflow.bench import sparse as bench_sparse
    from birdflow.bench.core import synthetic_bfdata
    from birdflow.model.neighbours import sparse_index

    rows = bench_sparse.main(["--cells", "120", "--radius-cells", "3", "--repeats", "1"])
    dense, sparse = rows
    index = sparse_index(synthetic_bfdata(120), radius_km=300)
    assert (dense["layout"], sparse["layout"]) == ("dense", "sparse")
    assert sparse["parameters"] == index.n_parameters() < dense["parameters"]
    assert sparse["K"] == index.n_neighbours < dense["K"] == dense["n_max"]
    assert dense["step_ms"] > 0 and sparse["step_ms"] > 0
    assert sparse["memory_bytes"] < dense["memory_bytes"]
    est = bench_sparse.main(["--cells", "120", "--radius-cells", "3", "--repeats", "1",
                             "--max-run-gb", "1e-6"])
    assert all(r["step_ms"] is None and "not run" in r["note"] for r in est)
    assert est[0]["memory_bytes"] == dense["memory_bytes"]  # the estimate is the same compile
    assert "(estimate, not run)" in bench_sparse._table(est)


def test_memory_only_rows_compare_online_and_matrix_costs(capsys):
    rows = bench.main(["--cells", "100", "--cases", "l2,default", "--variants", "online,matrix",
                       "--memory-only"])
    by_case = {r["case"]: r for r in rows}
    assert set(by_case) == {bench.DEFAULT, "w2-danskin[online]", "w2-danskin[matrix]"}  # no L2
    assert by_case["w2-danskin[online]"]["w2_cost"] == "online"
    assert by_case["w2-danskin[matrix]"]["w2_cost"] == "matrix"
    assert all(r["w2_term_memory_bytes"] > 0 for r in rows)
    assert "W2 term" in capsys.readouterr().out


def test_interleaved_runs_take_one_step_of_each_case_in_turn():
    """run_cases advances the case generators round-robin after each one's first step
    (compile and warm-up), and returns each generator's value (or its exception)."""
    log = []

    def case(name, steps):
        log.append((name, "compile"))
        yield
        for i in range(steps):
            log.append((name, i))
            if i < steps - 1:
                yield
        return name

    def broken():
        raise jax.errors.JaxRuntimeError("INTERNAL: Error: solve failed")
        yield

    out = bench.run_cases([case("a", 2), case("b", 3), broken()], interleave=True)
    assert out[:2] == ["a", "b"] and isinstance(out[2], jax.errors.JaxRuntimeError)
    assert log == [("a", "compile"), ("b", "compile"), ("a", 0), ("b", 0), ("a", 1), ("b", 1),
                   ("b", 2)]
    log.clear()
    assert bench.run_cases([case("a", 2), case("b", 1)], interleave=False) == ["a", "b"]
    assert log == [("a", "compile"), ("a", 0), ("a", 1), ("b", "compile"), ("b", 0)]


def test_hypergradient_bench_unrolled_memory_grows_with_k_and_implicit_does_not():
    """``python -m birdflow.bench.hypergrad``: the implicit row's compiled memory does not depend
    on how many CG steps it takes; the unrolled rows' grows with K and passes it."""
    from birdflow.bench import hypergrad as bench_hypergrad

    args = ["--cells", "30", "--ks", "5", "40", "--repeats", "1", "--intervals", "200"]
    imp, u5, u40 = bench_hypergrad.main([*args, "--cg-steps", "5"])
    imp_more = bench_hypergrad.main([*args[:3], "5", *args[4:], "--cg-steps", "40"])[0]
    assert imp["case"] == "implicit (CG)" and (imp["cg_steps"], imp_more["cg_steps"]) == (5, 40)
    assert imp_more["memory_bytes"] == imp["memory_bytes"]
    assert (u5["K"], u40["K"]) == (5, 40) and u5["memory_bytes"] < u40["memory_bytes"]
    assert imp["memory_bytes"] < u40["memory_bytes"]
