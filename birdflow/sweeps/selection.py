"""Model selection over a sweep's table, and tuning plots (birdflow_reference.md §3.7-3.8).

The established rule (BirdFlowPipeline ``identify_best_models``, Chen et al. 2026): keep models
whose distribution correlation ``cor_metric`` exceeds ``threshold``. The pipeline's
``min_dist_cor`` (the default here) is the mean over the prebreeding and postbreeding
migrations of each season's minimum weekly correlation (:mod:`birdflow.evaluation.seasons`);
``cor_metric="min_distr_cor"`` (the whole-year minimum) is kept as an option;
among them ``best_ll`` maximises ``weighted_mean_ll``, ``best_dg`` maximises
``weighted_mean_win_distance_fraction`` and ``best_mo`` maximises the geometric mean of the
three desirabilities d_max(cor), d_max(win distance fraction), d_max(weighted ll), each a linear
rescaling (x − min)/(max − min) over all finished models. ``best_mean_ll`` is the plain best
interval log-likelihood (``mean_ll``) over all finished models, with no correlation filter.
"""

from __future__ import annotations

import math
from pathlib import Path

LL = "weighted_mean_ll"
PIPELINE_COR = "min_dist_cor"  # BirdFlowPipeline: mean over the two migrations of min cor
WHOLE_YEAR_COR = "min_distr_cor"  # the whole-year minimum weekly correlation
WIN = "weighted_mean_win_distance_fraction"


def _has(row: dict, key: str) -> bool:
    v = row.get(key)
    return isinstance(v, int | float) and math.isfinite(v)


def desirability(rows: list[dict], metrics: list[str]) -> list[float | None]:
    """Geometric mean of d_max(metric) per row; None for a row lacking a metric.

    Each d_max is (x − min)/(max − min) over the rows that have the metric (1 when all equal).
    """
    scores: list[list[float] | None] = [[] for _ in rows]
    for m in metrics:
        values = [r[m] for r in rows if _has(r, m)]
        lo, hi = min(values), max(values)
        for i, r in enumerate(rows):
            if scores[i] is None or not _has(r, m):
                scores[i] = None
            else:
                scores[i].append(1.0 if hi == lo else (r[m] - lo) / (hi - lo))
    return [None if s is None else math.prod(s) ** (1 / len(s)) for s in scores]


def _pick(rows: list[dict], key, species: str, criterion: str, what: str) -> dict:
    """The row maximising ``key`` (first in table order on ties) as a best-model record."""
    scored = [(key(r), i) for i, r in enumerate(rows) if key(r) is not None]
    if not scored:
        return {"species": species, "criterion": criterion, "run": "", "loss": "", "value": None,
                "note": f"no finished model has {what}"}
    value, i = max(scored, key=lambda t: (t[0], -t[1]))
    r = rows[i]
    return {"species": species, "criterion": criterion, "run": r["run"], "loss": r.get("loss"),
            "value": value, "note": what,
            **{k: r.get(k) for k in ("obs_weight", "dist_weight", "ent_weight", "dist_pow",
                                     "de_ratio", "obs_prop")}}


def best_models(rows: list[dict], threshold: float = 0.9,
                cor_metric: str = PIPELINE_COR) -> list[dict]:
    """Best finished model per species by each criterion (best_ll, best_dg, best_mo, best_mean_ll).

    ``cor_metric``: :data:`PIPELINE_COR` (BirdFlowPipeline's rule, the default) or
    :data:`WHOLE_YEAR_COR` (the whole-year rule), or any summary column.

    Returns:
        One record per species and criterion: species, criterion, run, loss, value (the metric
        maximised), note (what was maximised, or why nothing was chosen), hyperparameters.
    """
    out = []
    for species in dict.fromkeys(r.get("species") for r in rows if r.get("status") == "finished"):
        done = [r for r in rows if r.get("status") == "finished" and r.get("species") == species]
        passing = [r for r in done if _has(r, cor_metric) and r[cor_metric] > threshold]
        if not any(_has(r, cor_metric) for r in done):
            why = (" (needs migration season dates in the data; the whole-year rule is "
                   f"cor_metric={WHOLE_YEAR_COR})" if cor_metric == PIPELINE_COR else "")
            out.append({"species": species, "criterion": "best_ll", "run": "", "loss": "",
                        "value": None, "note": f"no finished model has {cor_metric}{why}"})
        elif not passing:
            out.append({"species": species, "criterion": "best_ll", "run": "", "loss": "", "value": None,
                        "note": f"no finished model has {cor_metric} > {threshold}; lower --threshold"})
        else:
            out.append(_pick(passing, lambda r: r.get(LL) if _has(r, LL) else None, species,
                             "best_ll", f"max {LL} with {cor_metric} > {threshold}"))
            if any(_has(r, WIN) for r in passing):
                out.append(_pick(passing, lambda r: r.get(WIN) if _has(r, WIN) else None, species,
                                 "best_dg", f"max {WIN} with {cor_metric} > {threshold}"))
            metrics = [m for m in (cor_metric, WIN, LL) if any(_has(r, m) for r in done)]
            score = dict(zip(map(id, done), desirability(done, metrics), strict=True))
            out.append(_pick(passing, lambda r, score=score: score[id(r)], species, "best_mo",
                             f"max desirability of {', '.join(metrics)} with {cor_metric} > {threshold}"))
        out.append(_pick(done, lambda r: r.get("mean_ll") if _has(r, "mean_ll") else None, species,
                         "best_mean_ll", "max mean_ll (interval log-likelihood), no filter"))
    return out


def plot_tuning(rows: list[dict], out_dir: Path, hyper: tuple[str, ...] | None = None) -> list[Path]:
    """One PNG per metric: metric against each varying hyperparameter, coloured by loss.

    Args:
        rows: summary rows (finished runs are plotted).
        out_dir: folder for ``<metric>.png`` files.
        hyper: hyperparameter columns to plot against; default the sweep ones that vary.

    Returns:
        The PNG paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from birdflow.io import atomic_path
    from birdflow.sweeps.summary import HYPER_COLUMNS, TAIL_COLUMNS

    done = [r for r in rows if r.get("status") == "finished"]
    hyper = hyper or tuple(c for c in HYPER_COLUMNS if len({r.get(c) for r in done}) > 1)
    skip = {"run", "species", "loss", "status", *HYPER_COLUMNS, *TAIL_COLUMNS}
    metrics = [k for k in dict.fromkeys(k for r in done for k in r) if k not in skip  # varying ones
               and len({r[k] for r in done if _has(r, k)}) > 1]
    losses = sorted({str(r.get("loss")) for r in done})
    colours = {loss: f"C{i}" for i, loss in enumerate(losses)}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in metrics:
        cols = hyper or ("run",)
        fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3), squeeze=False)
        for ax, h in zip(axes[0], cols, strict=True):
            for loss in losses:
                pts = [(r[h] if h != "run" else i, r[m]) for i, r in enumerate(done)
                       if str(r.get("loss")) == loss and _has(r, m) and (h == "run" or _has(r, h))]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), s=18, color=colours[loss], label=loss, alpha=0.8)
            xs = [r[h] for r in done if h != "run" and _has(r, h) and r[h] > 0]
            if xs and max(xs) / min(xs) >= 10:  # a decade or more
                ax.set_xscale("log")
            ax.set_xlabel(h)
        axes[0][0].set_ylabel(m)
        axes[0][-1].legend(title="loss", fontsize="small")
        fig.suptitle(m)
        fig.tight_layout()
        path = out_dir / f"{m}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
