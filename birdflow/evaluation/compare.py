"""L2 vs W2 on the same data and seed: ``python -m birdflow.compare species=<name>``.

Trains (or reuses) one model per location loss in ``<report>/<loss>/``, evaluates each (with
tracks when given) and writes ``<report>/report.md`` with the metrics side by side, the winner
of each metric, the validation headlines side by side (``validate=true``, or runs already
validated by ``birdflow validate``), and figures: distributions, routes of both models,
per-week fit, loss curves.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from birdflow.errors import ConfigError
from birdflow.io import write_text_atomic

log = logging.getLogger("birdflow.evaluation.compare")

# metric -> which direction wins; metrics not listed are shown without a winner
DIRECTION = {
    "mean_l2": "lower", "mean_tv": "lower", "mean_w2": "lower", "max_w2": "lower",
    "mean_distr_cor": "higher", "min_distr_cor": "higher", "mean_step_cor": "higher",
    "min_step_cor": "higher", "st_traverse_cor": "higher", "md_traverse_cor": "higher",
    "mean_ll": "higher", "mean_ll_gain": "higher",
    "mean_win_distance": "higher", "mean_win_distance_fraction": "higher", "mean_win_prob": "higher",
    "mean_energy_improvement": "higher", "truth_transition_tv": "lower",
    "mean_energy_score_bf": "lower", "weighted_mean_ll": "higher", "weighted_mean_ll_gain": "higher",
    "weighted_mean_win_distance": "higher", "weighted_mean_win_distance_fraction": "higher",
    "weighted_mean_win_prob": "higher", "weighted_energy_improvement": "higher",
}


def loss_config(cfg: DictConfig, name: str) -> DictConfig:
    """conf/loss/<name>.yaml with the shared weights of ``cfg.loss`` and ``cfg.w2`` overrides."""
    loss_dir = resources.files("birdflow.conf") / "loss"
    path = loss_dir / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"losses: unknown location loss {name!r}; choose from "
                          f"{sorted(p.name[:-5] for p in loss_dir.iterdir() if p.name.endswith('.yaml'))}")
    lc = OmegaConf.create(path.read_text())
    for key in ("obs_weight", "dist_weight", "ent_weight", "dist_pow"):
        lc[key] = cfg.loss[key]
    if name == "w2" and cfg.get("w2"):
        lc.w2 = OmegaConf.merge(lc.w2, cfg.w2)
    return lc


def run_one(cfg: DictConfig, name: str, report_dir: Path) -> Path:
    """Train (or resume/reuse) the model of one location loss; returns its run dir."""
    from birdflow.training.loop import train

    if (cfg.get("runs") or {}).get(name):
        return Path(cfg.runs[name])
    run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in ("losses", "w2", "tracks", "runs", "n_routes", "validate"):
        run_cfg.pop(key, None)
    run_cfg.loss = loss_config(cfg, name)
    run_cfg.run_dir, run_cfg.resume, run_cfg.evaluate = str(report_dir / name), True, False
    if cfg.get("tracks"):
        run_cfg.species.tracks = cfg.tracks
    train(run_cfg)
    return report_dir / name


def metrics_table(results: dict[str, dict]) -> tuple[str, dict[str, int]]:
    """Markdown table metric | each model | winner; also the number of wins per model."""
    names = list(results)
    keys = [k for k in results[names[0]]["summary"] if any(
        isinstance(results[n]["summary"].get(k), int | float) for n in names)]
    lines = ["| metric | " + " | ".join(names) + " | better |", "|---" * (len(names) + 2) + "|"]
    wins = dict.fromkeys(names, 0)
    for k in keys:
        vals = [results[n]["summary"].get(k) for n in names]
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals]
        better = ""
        ok = [v for v in vals if isinstance(v, int | float)]
        if k in DIRECTION and len(ok) == len(vals) and len(set(vals)) > 1:
            pick = np.argmin(vals) if DIRECTION[k] == "lower" else np.argmax(vals)
            better = f"**{names[pick]}** ({DIRECTION[k]})"
            wins[names[pick]] += 1
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {better} |")
    return "\n".join(lines), wins


def figures(models: dict, results: dict, report_dir: Path, n_routes: int, seed: int) -> list[Path]:
    """Distribution maps and routes per model, per-week fit curves and loss curves."""
    from birdflow.evaluation.maps import (
        plot_distributions,
        plot_fit_per_week,
        plot_loss,
        plot_routes,
    )
    from birdflow.evaluation.routes import sample_routes

    out = []
    any_model = next(iter(models.values()))
    weeks = any_model.data["week"].values
    show = weeks[np.linspace(0, len(weeks) - 1, 4).round().astype(int)]
    for name, model in models.items():
        out.append(report_dir / f"distributions_{name}.png")
        plot_distributions(model, show, out[-1])
        routes = sample_routes(model, n_routes, int(weeks[0]), model.n_transitions - 1 if model.cyclic
                               else model.n_transitions, seed=seed)
        out += [report_dir / f"routes_{name}.png", report_dir / f"loss_{name}.png"]
        plot_routes(model, routes, out[-2])
        plot_loss(dict(model.loss_history), out[-1])
    for metric, label in (("tv", "total variation, model vs S&T"),
                          ("distr_cor", "Pearson r, model vs S&T")):
        curves = {n: np.asarray(r["per_week"][metric], float) for n, r in results.items()}
        out.append(report_dir / f"fit_per_week_{metric}.png")
        plot_fit_per_week(curves, out[-1], weeks=weeks, ylabel=label, title=f"Fit per week ({metric})")
    return out


def validation_section(runs: dict[str, Path], validate: bool = False,
                       tracks: str | None = None, **opts) -> list[str]:
    """Markdown lines of the runs' validation headlines (pooled) side by side.

    With ``validate`` each run is validated first (``birdflow validate``, on ``tracks`` or the
    run's own; ``opts`` go to :func:`birdflow.evaluation.validation.validate_run`); otherwise
    the runs already validated are shown ([] when none is).
    """
    from birdflow.evaluation.report import headline_table, read_validation
    from birdflow.evaluation.validation import validate_run

    if validate:
        for d in runs.values():
            validate_run(d, tracks=tracks, **opts)
    found = {n: read_validation(d) for n, d in runs.items()}
    found = {n: r for n, r in found.items() if r is not None}
    if not found:
        return []
    table = headline_table({n: r["headline"]["all"] for n, r in found.items()})
    return ["## Validation (all sources pooled; `birdflow validate`)", "", table, "",
            *[f"- {n}: `{runs[n]}/validation/report.html` (tracks {r['tracks']})"
              for n, r in found.items()], ""]


def run_settings(model) -> str:
    """How a run was trained, from its own model file (not from compare's config, whose
    defaults need not be what a reused run of runs.l2=/runs.w2= was trained with)."""
    hp = model.hyperparameters

    def num(key: str) -> str:
        value = hp.get(key)
        return "?" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    return (f"seed {num('rng_seed')}, {num('training_steps')} steps, weights obs "
            f"{num('obs_weight')}, dist {num('dist_weight')}, ent {num('ent_weight')}, "
            f"dist_pow {num('dist_pow')}")


def compare(cfg: DictConfig, report_dir: Path) -> Path:
    """Run the comparison and write the report; returns the path of report.md."""
    from birdflow.evaluation.evaluate import evaluate_run
    from birdflow.model.fitted import load_model

    names = list(cfg.losses)
    if cfg.get("tune"):
        return tune_compare(cfg, report_dir)
    if len(names) < 2:
        raise ConfigError(f"losses={names}: name at least two location losses, e.g. losses=[l2,w2]")
    runs = {n: run_one(cfg, n, report_dir) for n in names}
    models = {n: load_model(d) for n, d in runs.items()}
    results = {n: evaluate_run(d, model=models[n], tracks=cfg.get("tracks")) for n, d in runs.items()}
    table, wins = metrics_table(results)
    figs = figures(models, results, report_dir, int(cfg.n_routes), int(cfg.seed))
    m0 = models[names[0]]
    head = [f"# L2 vs W2: {m0.data.attrs.get('common_name', m0.data.attrs.get('species_code'))}", "",
            f"- data: {m0.n_cells} cells, {m0.index.n_weeks} weeks, {m0.data.attrs.get('res_km')} km",
            *[f"- {n}: `{runs[n]}` ({run_settings(models[n])})" for n in names],
            f"- tracks scored: {results[names[0]].get('tracks') or 'none'}",
            "- metrics won: " + ", ".join(f"{n} {w}" for n, w in wins.items()), "",
            "## Metrics", "", table, ""]
    validation = validation_section(runs, bool(cfg.get("validate")), cfg.get("tracks"))
    head += [*validation, "## Figures", ""]
    head += [f"![{p.stem}]({p.name})" for p in figs]
    notes = [f"- {n}: {note}" for n in names for note in results[n].get("notes", [])]
    if notes:
        head += ["", "## Notes", "", *notes]
    report = write_text_atomic(report_dir / "report.md", "\n".join(head) + "\n")
    write_text_atomic(report_dir / "metrics.json",
                      json.dumps({n: r["summary"] for n, r in results.items()}, indent=2) + "\n")
    print(table)
    if validation:
        print("\n" + "\n".join(validation))
    print(f"\nreport: {report}")
    return report


def score_runs(run_dirs: list, tracks: str | Path, truth: str | Path | None = None) -> list[dict]:
    """Score finished run dirs on one tracks CSV (e.g. the validation birds), writing nothing.

    Returns one dict per run: run_dir, the weights it was trained with (config.yaml), and the
    interval log-likelihood summary (mean_ll, mean_null_ll, mean_ll_gain, n_intervals), the
    S&T fit (mean_tv, min_distr_cor) and, with ``truth``, truth_transition_tv.
    """
    from birdflow.data.tracks import load_tracks
    from birdflow.evaluation.evaluate import evaluate_model
    from birdflow.model.fitted import load_model
    from birdflow.runs import read_config

    rows, built, truth_model = [], None, load_model(truth) if truth else None
    for d in run_dirs:
        d = Path(d)
        model = load_model(d)
        if built is None:
            built = load_tracks(tracks, model.data, cyclic=model.cyclic, warn=False)
        res = evaluate_model(model, built, truth_model, w2=False, win_prob=False)["summary"]
        saved = read_config(d)
        lc = saved.loss if saved is not None and "loss" in saved else {}
        rows.append({"run_dir": str(d), **{k: lc.get(k) for k in ("dist_weight", "ent_weight",
                                                                  "dist_pow")},
                     **{k: res.get(k) for k in ("mean_ll", "mean_null_ll", "mean_ll_gain",
                                                "n_intervals", "mean_tv", "min_distr_cor",
                                                "truth_transition_tv")}})
    return rows


def tune_config(cfg: DictConfig, name: str, report_dir: Path) -> DictConfig:
    """The tune config of one location loss: conf/tune.yaml's ``tune`` block + ``tuning``."""
    base = OmegaConf.create((resources.files("birdflow.conf") / "tune.yaml").read_text())
    run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in ("losses", "w2", "runs", "n_routes", "tune", "tuning", "validate"):
        run_cfg.pop(key, None)
    run_cfg.loss = loss_config(cfg, name)
    given = OmegaConf.to_container(cfg.get("tuning") or OmegaConf.create({}), resolve=True)

    def set_only(d):  # null means "tune.yaml's value"
        return {k: set_only(v) if isinstance(v, dict) else v for k, v in d.items()
                if v is not None and v != {}}

    run_cfg.tune = OmegaConf.merge(base.tune, set_only(given))
    run_cfg.precision = base.precision
    run_cfg.run_dir, run_cfg.resume = str(report_dir / f"tune_{name}"), True
    return run_cfg


def tune_compare(cfg: DictConfig, report_dir: Path) -> Path:
    """``compare tune=true``: tune each loss the same way on the same tuning birds (same seed,
    same split) and report both on the validation birds, with the θ each ended at."""
    import time

    import pandas as pd

    from birdflow.evaluation.evaluate import evaluate_run
    from birdflow.runs import read_run_info
    from birdflow.tuning.outer import MODEL_DIR, TRAJECTORY_CSV, TuningStopped, tune

    names = list(cfg.losses)
    results, extra, notes = {}, {}, []
    for name in names:
        t0 = time.perf_counter()
        tune_dir = report_dir / f"tune_{name}"
        try:
            tune(tune_config(cfg, name, report_dir))  # evaluated below, on the validation birds
        except TuningStopped as e:  # the last good θ's model is kept: report it, say so
            if not (tune_dir / MODEL_DIR / "model.nc").exists():
                raise
            notes.append(f"- {name}: tuning stopped early: {e}")
        wall = time.perf_counter() - t0
        results[name] = evaluate_run(tune_dir / MODEL_DIR)
        traj = pd.read_csv(tune_dir / TRAJECTORY_CSV)
        extra[name] = {"theta": list(read_run_info(tune_dir)["theta"]),
                       "inner_steps": int(traj["inner_steps"].sum()),
                       "cg_steps": int(traj["cg_steps"].sum()), "wall_s": wall,
                       "tune_dir": str(tune_dir)}
    table, wins = metrics_table(results)
    lines = ["# L2 vs W2, each tuned by implicit differentiation", "",
             "Both tuned on the same tuning birds; every metric below is on the validation birds.",
             "", "| loss | dist_weight | ent_weight | dist_pow | w2 scale | inner steps | CG steps "
             "| wall s | tune dir |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        t = np.asarray(extra[n]["theta"])
        lines.append(f"| {n} | {np.exp(t[0]):.4g} | {np.exp(t[1]):.4g} | {t[2]:.3g} | "
                     f"{np.exp(t[3]):.4g} | {extra[n]['inner_steps']} | {extra[n]['cg_steps']} | "
                     f"{extra[n]['wall_s']:.0f} | `{extra[n]['tune_dir']}` |")
    lines += ["", "- metrics won: " + ", ".join(f"{n} {w}" for n, w in wins.items()), "",
              "## Metrics (validation birds)", "", table]
    if notes:
        lines += ["", "## Notes", "", *notes]
    report = write_text_atomic(report_dir / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(report_dir / "metrics.json", json.dumps(
        {n: {"summary": r["summary"], **extra[n]} for n, r in results.items()}, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {report}")
    return report
