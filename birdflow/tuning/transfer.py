"""Leave-one-out transfer of tuned weights to a species whose tracks were not used.

For every species s of a set (the species zoo by default), four θ are scored on s's
*validation* birds as the mean interval log-likelihood gain over the S&T-only null (nats per
interval, :meth:`birdflow.tuning.problem.SpeciesProblem.null_log_likelihood`):

- ``default``: the tune's start (the loss config's weights, ``tune.start``);
- ``own``: tuned on s's own tuning birds (the joint loop with s alone: ``birdflow tune``'s steps);
- ``pooled``: one θ jointly tuned on the *other* species' tuning birds (:mod:`joint`);
- ``traits``: the trait model ``θ̄ + A x`` tuned on the other species, evaluated at s's traits
  (standardized by the others' mean and spread, :mod:`traits`).

Every species is set up once (``birdflow tune``'s set-up, :mod:`problem`) and its first fit at
the start is shared by all runs, so compilation and the cold fit are paid once a species.
``recovered_*`` is the share of the own-tuned gain over the default that a transfer keeps:
``(gain_x − gain_default) / (gain_own − gain_default)``. The table is written after every part
(an own tune, a pooled or a trait fold); a stopped run rerun with the same run dir does only
the parts it lacks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from birdflow.io import write_text_atomic
from birdflow.tuning import joint, problem, traits
from birdflow.tuning.inner import THETA_NAMES
from birdflow.tuning.settings import TuneSettings

log = logging.getLogger("birdflow.tuning.transfer")
METHODS = ("default", "own", "pooled", "traits")


@dataclass(frozen=True)
class TransferSettings:
    """``transfer.*`` of ``conf/transfer.yaml``."""

    traits: tuple[str, ...] = ("migration_km",)
    ridge: float = 0.1
    slope_bound: float = 2.0
    own_steps: int | None = None  # accepted outer steps of an own tune (None: tune.steps)
    joint_steps: int | None = None  # ... of a joint (pooled or trait) tune


@dataclass
class Species:
    name: str
    sp: problem.SpeciesProblem
    traits: dict
    first: object = None  # the first fit at theta0 (FitResult), shared by every run


def setup(cfgs: dict, precision: str = "float64") -> tuple[list[Species], TuneSettings]:
    """Each species' problem from its composed ``conf/transfer.yaml`` (name -> config), as
    ``birdflow tune`` sets one up; the tune settings (shared: from the first species)."""
    import jax
    import jax.numpy as jnp

    from birdflow.training.settings import validate_train_config
    from birdflow.tuning.settings import tune_settings

    if precision == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if precision == "float64" else jnp.float32
    out, first = [], None
    for name, cfg in cfgs.items():
        loss_cfg, _ = validate_train_config(cfg)
        ts = tune_settings(cfg.get("tune"), loss_cfg.location)
        if loss_cfg.location == "w2":
            loss_cfg = problem.w2_for_tuning(loss_cfg, ts)
        tracks_csv, _ = problem.tracks_path(cfg)
        ds, _, _, split = problem.load_split(cfg, ts, tracks_csv)
        sp = problem.build(cfg, ts, loss_cfg, ds, split, dtype)
        log.info("%s: %d tuning birds (%d intervals), %d validation birds (%d), %d slots a week",
                 name, len(split.tuning_birds), len(split.tuning), len(split.validation_birds),
                 len(split.validation), sp.index.n_max)
        out.append(Species(name, sp, dict(cfg.species.get("traits") or {})))
        first = first or ts
    return out, first


def _member(sp_: Species) -> joint.Member:
    f = sp_.first
    return joint.Member(sp_.name, sp_.sp.parts, f.params, f.state, sp_.sp.theta0,
                        sp_.sp.n_tuning)


def gain(s: Species, theta, ts: TuneSettings, fit=None) -> float:
    """Validation gain over the null of species s fitted at θ (``tune.first_max_steps`` Newton
    steps from its first fit, warm; or the given ``fit``)."""
    p, theta = s.sp.parts, np.asarray(theta, float)
    res = fit or p.fit(p.warm(s.first.params, s.sp.theta0, theta), theta, s.first.state,
                       ts.first_max_steps)
    if not res.converged:
        log.warning("%s: the scoring fit at θ %s stopped at |grad| %.2g", s.name,
                    np.round(theta, 3).tolist(), res.grad_norm)
    return float(p.monitors[0](p.logits(res.params, theta))) - s.sp.null_log_likelihood()


def _tune(members: list[Species], tmap: traits.ThetaMap, ts: TuneSettings, label: str,
          out_dir: Path, phi0=None) -> joint.JointResult:
    t0 = time.perf_counter()
    res = joint.run([_member(m) for m in members], tmap, ts, phi0)
    pd.DataFrame(res.trajectory).to_csv(out_dir / f"{label}.csv", index=False)
    log.info("%s: %s (%d rows, %.0f s)", label, res.stopped or res.ended, len(res.trajectory),
             time.perf_counter() - t0)
    return res


def leave_one_out(species: list[Species], ts: TuneSettings, tr: TransferSettings,
                  out_dir: Path) -> pd.DataFrame:
    """The table (one row per species; see module doc), written to ``out_dir`` as it grows:
    ``transfer.csv``, ``transfer.md``, ``transfer.png`` and every run's trajectory CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ts_own = replace(ts, descent=replace(ts.descent, steps=tr.own_steps or ts.steps))
    ts_joint = replace(ts, descent=replace(ts.descent, steps=tr.joint_steps or ts.steps))
    t0 = time.perf_counter()
    rows = {s.name: {"species": s.name, "n_validation_intervals": len(s.sp.split.validation),
                     "null_ll": s.sp.null_log_likelihood()} for s in species}
    done = _finished(out_dir / "transfer.csv", rows)
    base = species[0].sp
    names = [s.name for s in species]
    feats = np.stack([traits.features(s.traits, tr.traits, s.name) for s in species])

    def write():
        table = pd.DataFrame(list(rows.values()))
        for m in ("pooled", "traits"):
            if f"gain_{m}" in table and "gain_own" in table:
                table[f"recovered_{m}"] = ((table[f"gain_{m}"] - table["gain_default"])
                                           / (table["gain_own"] - table["gain_default"]))
        if "note" in table:
            table["note"] = table["note"].fillna("")
        table.to_csv(out_dir / "transfer.csv", index=False)
        write_text_atomic(out_dir / "transfer.md", markdown(table))
        plot(table, out_dir / "transfer.png")
        return table

    for s in species:  # own tunes; their first rows are the defaults
        t = time.perf_counter()
        s.first = s.sp.parts.fit(s.sp.params, s.sp.theta0, s.sp.prob.init_state(),
                                 ts.first_max_steps)
        if done.get((s.name, "own")):
            log.info("%s: own tune already in %s", s.name, out_dir / "transfer.csv")
            continue
        if not s.first.converged:  # no hypergradient: scored, but nothing is learned from it
            rows[s.name].update(gain_default=gain(s, s.sp.theta0, ts, s.first), note=(
                f"no stationary fit at the defaults (|grad| {s.first.grad_norm:.1e} after "
                f"{s.first.steps} Newton steps): not tuned, left out of the joint tunes"))
            log.warning("%s: %s", s.name, rows[s.name]["note"])
            write()
            continue
        res = _tune([s], traits.pooled(s.sp.theta0, s.sp.free, s.sp.lo, s.sp.hi, 1), ts_own,
                    f"own_{s.name}", out_dir)
        traj = res.trajectory
        accepted = [r for r in traj if r["accepted"]]
        val = f"validation_ll_{s.name}"
        rows[s.name].update(
            gain_default=accepted[0][val] - rows[s.name]["null_ll"] if accepted else np.nan,
            gain_own=accepted[-1][val] - rows[s.name]["null_ll"] if accepted else np.nan,
            theta_own=_theta_text(res.phi), own_steps=len(accepted) - 1,
            own_ended=res.stopped or res.ended, own_s=round(time.perf_counter() - t, 1))
        write()
    own = [_own_theta(s, base, out_dir) for s in species]
    for k, s in enumerate(species):  # species by species: a stopped run leaves whole rows
        for model in ("pooled", "traits"):
            if done.get((s.name, model)):
                log.info("%s: %s transfer already in %s", s.name, model, out_dir / "transfer.csv")
                continue
            t = time.perf_counter()
            rest = [j for j in range(len(species)) if j != k and species[j].first.converged]
            others = [species[j] for j in rest]
            x = (traits.standardize(feats, rest) if model == "traits"
                 else np.zeros((len(species), 0)))
            tmap = traits.ThetaMap(base.theta0, base.free, base.lo, base.hi, x[rest],
                                   tr.ridge if model == "traits" else 0.0, tr.slope_bound)
            # start where the others' own tunes ended (their mean θ; for the trait model, the
            # slopes that best reproduce them): fewer steps than from θ0, learned from them only
            tuned = [own[j] for j in rest]
            phi0 = None if any(t is None for t in tuned) else tmap.fitted_start(np.stack(tuned))
            res = _tune(others, tmap, ts_joint, f"{model}_without_{s.name}", out_dir, phi0)
            theta = tmap.theta_at(res.phi, x[k])
            rows[s.name].update({f"gain_{model}": gain(s, theta, ts),
                                 f"theta_{model}": _theta_text(theta[base.free]),
                                 f"{model}_steps": sum(r["accepted"] for r in res.trajectory) - 1,
                                 f"{model}_s": round(time.perf_counter() - t, 1)})
            write()
    log.info("leave-one-out over %s: %.0f s", names, time.perf_counter() - t0)
    return write()


def _own_theta(s: Species, base, out_dir: Path) -> np.ndarray | None:
    """(4,) θ at the last accepted step of species s's own tune (``own_<s>.csv``), or None."""
    path = out_dir / f"own_{s.name}.csv"
    if not path.exists():
        return None
    rows = pd.read_csv(path)
    rows = rows[rows["accepted"] == 1]
    if rows.empty:
        return None
    theta = np.array(base.theta0, float)
    free = [n for n, f in zip(THETA_NAMES, base.free, strict=True) if f]  # the own tune's φ
    theta[base.free] = rows.iloc[-1][free].to_numpy(float)
    return theta


def _finished(table_csv: Path, rows: dict) -> dict:
    """What a stopped run with this run dir finished (``transfer.csv`` grows row by row):
    its values go into ``rows``; returns ``{(species, "own" | "pooled" | "traits"): True}``.
    Each species' first fit is redone (the joint tunes start from it); nothing else is."""
    if not table_csv.exists():
        return {}
    old = pd.read_csv(table_csv, keep_default_na=True)
    done = {}
    for rec in old.to_dict("records"):
        name = rec.get("species")
        if name not in rows:
            continue
        rec = {k: v for k, v in rec.items() if not k.startswith("recovered_")}
        rows[name].update({k: v for k, v in rec.items() if not _missing(v)})
        done[(name, "own")] = not _missing(rec.get("gain_own")) or not _missing(rec.get("note"))
        for model in ("pooled", "traits"):
            done[(name, model)] = not _missing(rec.get(f"gain_{model}"))
    log.info("resuming %s: %d of %d parts finished", table_csv, sum(done.values()),
             3 * len(rows))
    return done


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v)) or v == ""


def _theta_text(theta_free) -> str:
    """dist_weight / ent_weight / dist_pow of the free components (log weights as weights)."""
    t = np.asarray(theta_free, float)[:3]
    return f"{np.exp(t[0]):.3g}/{np.exp(t[1]):.3g}/{t[2]:.2f}"


COLUMNS = ["species", "gain_default", "gain_own", "gain_pooled", "gain_traits",
           "recovered_pooled", "recovered_traits", "theta_own", "theta_pooled", "theta_traits",
           "note"]


def markdown(table: pd.DataFrame) -> str:
    cols = [c for c in COLUMNS if c in table]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    """Grouped bars per species: the validation gain over the null by where θ came from (top)
    and its change from the defaults' gain (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if f"gain_{m}" in table]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    width = 0.8 / max(len(methods), 1)
    pos = np.arange(len(table))
    for i, m in enumerate(methods):
        x = pos + (i - (len(methods) - 1) / 2) * width
        axes[0].bar(x, table[f"gain_{m}"], width, label=m, color=f"C{i}")
        if m != "default":
            axes[1].bar(x, table[f"gain_{m}"] - table["gain_default"], width, color=f"C{i}")
    axes[1].set_xticks(pos, [str(s).removeprefix("zoo_") for s in table["species"]])
    axes[0].set_ylabel("validation gain over the\nS&T null (nats / interval)")
    axes[1].set_ylabel("gain − the defaults' gain\n(nats / interval)")
    for ax in axes:
        ax.axhline(0, color="k", lw=0.5)
    axes[0].legend(title="θ from", ncols=len(methods), fontsize=8)
    axes[0].set_title("Leave-one-out: weights from the other species vs own-tuned and defaults")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
