"""The validation report's four figures: calibration histograms, decay with horizon,
migratory connectivity and route biology (tracks against model routes), per source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from birdflow.evaluation.route_biology import QUANTITIES, quantity_values
from birdflow.io import atomic_path


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def figures(v, out_dir: Path) -> list[Path]:
    """calibration.png, horizon.png, connectivity.png and route_biology.png (the last two
    when the data have season dates)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    res, scored = v.result, v.scored
    groups = list(res["calibration"])
    out = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, col, title in zip(axes, ("pit_row", "pit_col", "hpd_w"),
                              ("PIT along rows (N→S)", "PIT along columns (W→E)",
                               "Σ f ≤ f(obs): forecast mass as unlikely"), strict=True):
        for g in groups:
            x = scored[col] if g == "all" else scored.loc[scored["source"] == g, col]
            ax.hist(x.dropna(), bins=10, range=(0, 1), density=True, histtype="step",
                    lw=2.2 if g == "all" else 1.3, color="k" if g == "all" else None,
                    label=f"{g} (n {x.notna().sum()})")
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set(title=title, xlabel="value", ylabel="density", xlim=(0, 1))
    axes[0].legend(fontsize=8)
    fig.suptitle("Calibration: a calibrated model gives flat histograms (dotted line)", y=1.03)
    out.append(_save(fig, out_dir / "calibration.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, xlabel in zip(axes, ("days", "km"), ("days between fixes", "km between fixes"),
                               strict=True):
        for g in groups:
            bins = [b for b in res["horizon"][g][key] if b["n"] and b["gain"] is not None]
            if not bins:
                continue
            x = np.arange(len(res["horizon"][g][key]))
            idx = [res["horizon"][g][key].index(b) for b in bins]
            ax.errorbar(x[idx], [b["gain"] for b in bins],
                        yerr=[1.96 * (b["gain_se"] or 0) for b in bins], marker="o", capsize=3,
                        label=g, color="k" if g == "all" else None, ls="--" if g == "all" else "-",
                        zorder=3 if g == "all" else 2)
        labels = [b["bin"] for b in res["horizon"][groups[0]][key]]
        ax.set_xticks(np.arange(len(labels)), labels, rotation=45, fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel=xlabel, ylabel="gain over S&T null (nats)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Decay with horizon: above 0 the transitions beat the maps alone (95 % bars)",
                 y=1.02)
    out.append(_save(fig, out_dir / "horizon.png"))

    if res["connectivity"]:
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        k = 0
        ticks = []
        for mig, entry in res["connectivity"].items():
            for g, m in entry["by_source"].items():
                if m["observed"] is None or m["observed_ci"] is None or m["model"] is None:
                    continue
                lo, hi = m["observed_ci"]
                ax.errorbar([k], [m["observed"]], yerr=[[m["observed"] - lo], [hi - m["observed"]]],
                            fmt="o", color="k", capsize=4, label="observed (bootstrap 95 %)" if k == 0 else None)
                ax.plot([k + 0.15], [m["model"]], "s", color="C1", label="model, same origins" if k == 0 else None)
                ticks.append((k, f"{mig}\n{g}"))
                k += 1
            first = mig == next(iter(res["connectivity"]))
            ax.plot([k - 0.5], [entry["range_wide"]["mc"]], "^", color="C2",
                    label="model range-wide" if first else None)
        if ticks:
            ax.set_xticks([t for t, _ in ticks], [s for _, s in ticks], fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(ylabel="MC (Cohen et al. 2018)", title="Migratory connectivity")
        ax.legend(fontsize=8)
        out.append(_save(fig, out_dir / "connectivity.png"))

    migs = list(v.routes)
    if migs:
        fig, axes = plt.subplots(len(migs), len(QUANTITIES), figsize=(15, 2.6 * len(migs)),
                                 squeeze=False)
        for r, mig in enumerate(migs):
            obs, sim = v.routes[mig]
            for c, q in enumerate(QUANTITIES):
                ax = axes[r, c]
                a, b = quantity_values(obs, q), quantity_values(sim, q)
                if a.size and b.size:
                    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
                    bins = np.linspace(lo, hi if hi > lo else lo + 1, 16)
                    ax.hist(b, bins=bins, density=True, alpha=0.5, color="C1", label="model routes")
                    ax.hist(a, bins=bins, density=True, histtype="step", lw=1.8, color="k",
                            label="tracks")
                ax.set_title(f"{mig}: {q}", fontsize=9)
                ax.tick_params(labelsize=7)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle("Route biology: tracks (black) and model routes from the same starts (orange)")
        fig.tight_layout()
        out.append(_save(fig, out_dir / "route_biology.png"))
    return out
