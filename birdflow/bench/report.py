"""The benchmark's summary table (:func:`birdflow.bench.core.main` prints it)."""

from __future__ import annotations


def table(rows: list[dict]) -> str:
    head = (f"{'n_max':>5} {'case':<34} {'compile s':>9} {'step ms':>9} {'x L2':>6} {'ref/ours':>8} "
            f"{'ref/like':>8} {'iters':>6} {'mem MB':>8} {'W2 mem MB':>9} {'W2 rel err':>10} "
            f"{'grad vs danskin':>15} {'grad vs tight: bias/cos':>23}")
    lines = [head, "-" * len(head)]

    def fmt(v, spec):
        ok = isinstance(v, int | float) and v == v
        return format(v, spec) if ok else "-".rjust(int(spec.split(".")[0]))

    for r in rows:
        if r.get("error"):
            lines.append(f"{r['n_max']:>5} {r['case']:<34} failed: {r['error'][:60]}")
            continue
        w2mem = r["w2_term_memory_bytes"] / 2**20 if r.get("w2_term_memory_bytes") else None
        tight = (f"{r['grad_bias_vs_tight']:.1e}/{r['grad_cos_vs_tight']:.5f}"
                 if "grad_bias_vs_tight" in r else "-")
        mem = r["memory_bytes"] / 2**20 if r.get("memory_bytes") else None
        gd = r.get("grad_rel_diff_vs_danskin")
        gd = ("non-finite" if not r.get("grad_finite", True) else f"{gd:.1e}") if gd is not None \
            else "-"
        lines.append(f"{r['n_max']:>5} {r['case']:<34} {fmt(r['compile_s'], '9.1f')} "
                     f"{fmt(r['step_ms'], '9.1f')} {fmt(r.get('ratio_vs_l2'), '6.2f')} "
                     f"{fmt(r.get('ref_over_ours'), '8.1f')} {fmt(r.get('ref_over_like'), '8.1f')} "
                     f"{fmt(r.get('sinkhorn_iterations'), '6.0f')} "
                     f"{fmt(mem, '8.0f')} {fmt(w2mem, '9.1f')} {fmt(r.get('w2_rel_err'), '10.1e')} "
                     f"{gd:>15} {tight:>23}")
        if "l2_byte_bound_ms" in r:
            lines.append(f"{'':>5} {'  (L2 byte bound)':<34} {'':>9} {r['l2_byte_bound_ms']:9.1f}")
    return "\n".join(lines)
