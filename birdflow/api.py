"""The Python front door: what the commands do, as functions.

    import birdflow as bf
    m = bf.fit(species="synthetic", loss="w2", optim={"steps": 300})
    print(m)                                   # a short summary, not arrays
    bf.evaluate(m)["summary"]["mean_ll"]       # the species' tracks, as `birdflow evaluate`
    bf.plot_distributions(m, [10, 20])         # a matplotlib Figure

Every function composes the same packaged configs (``conf/``) as the command line, so a value
that works as ``optim.steps=300`` on the command line works as ``optim={"steps": 300}`` here,
and the same unknown keys and bad values fail with the same :class:`birdflow.errors.ConfigError`.
No Hydra runtime is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import xarray as xr
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from birdflow.app import check_types, compose, is_group
from birdflow.errors import ConfigError
from birdflow.model.fitted import BirdFlowModel
from birdflow.model.fitted import load_model as _load_model
from birdflow.runs import model_stamp


def config(command: str = "train", overrides: Sequence[str] = (), **values) -> DictConfig:
    """The config ``birdflow <command> <overrides>`` would run with, plus ``values`` merged in.

    ``overrides`` use the command-line grammar (``["loss=w2", "optim.steps=50"]``); ``values``
    are nested mappings or plain values (``optim={"steps": 50}``, ``seed=3``). Group choices
    (``species``, ``loss``, ``optim``, ``data``, ``experiment``) may be given as names in either.

    Raises:
        ConfigError: an unknown key, a malformed override, or a word where a number belongs.
    """
    groups = {k: values.pop(k) for k in list(values) if isinstance(values[k], str)
              and is_group(k)}
    overrides = [*overrides, *(f"{k}={v}" for k, v in groups.items())]
    cfg = compose(command, overrides, hydra_node=True)
    if values:
        base = cfg.copy()
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(values))
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(f"{key}: unknown key for conf/{command}.yaml; check the spelling "
                              "(`birdflow.config()` shows every key)") from None
        check_types(cfg, base, list(_leaf_keys(values)))
    return cfg


def fit(species: str = "synthetic", loss: str = "l2", *, data: xr.Dataset | None = None,
        run_dir: str | os.PathLike | None = None, overrides: Sequence[str] = (),
        **values) -> BirdFlowModel:
    """Fit a model as ``birdflow train species=<species> loss=<loss> ...`` does; return it.

    The run dir (``run_dir``, else ``outputs/<species>/<loss>/<timestamp>/`` below the current
    directory, as the command) receives the model, loss history, metrics and loss curve; the
    returned model's ``run_dir`` says where. ``data`` (a BirdFlowData) skips preprocessing.
    """
    from birdflow.training.loop import train

    cfg = config("train", overrides, species=species, loss=loss, **values)
    hydra_dir = Path(str(cfg.hydra.run.dir))
    with open_dict(cfg):
        del cfg["hydra"]
        if run_dir is None and not cfg.get("run_dir") and not cfg.get("resume"):
            run_dir = _fresh(hydra_dir)
        if run_dir is not None:
            cfg.run_dir = str(run_dir)
    apply_weights(cfg)
    return train(cfg, data=data, after=after_training).model


def load_model(run_dir: str | os.PathLike) -> BirdFlowModel:
    """The fitted model of a run dir (ours, or one imported from a BirdFlowR HDF5 file)."""
    return _load_model(run_dir)


def preprocess(species: str = "synthetic", *, overrides: Sequence[str] = (),
               **values) -> xr.Dataset:
    """S&T raster -> BirdFlowData for a species config, as ``birdflow preprocess`` (cached)."""
    from birdflow.synthetic import load_or_preprocess

    cfg = config("preprocess", overrides, species=species, **values)
    ds, _ = load_or_preprocess(cfg.species, cfg.data,
                               (cfg.get("model") or {}).get("neighbourhood_km"))
    return ds


def evaluate(model: BirdFlowModel | str | os.PathLike, tracks: str | os.PathLike | None = None,
             truth: str | os.PathLike | None = None, *, recompute: bool = False,
             **opts) -> dict:
    """All metrics of a model, as ``birdflow evaluate``: fit to S&T and track log-likelihood.

    ``model`` is a model or a run dir. A model with a run dir is scored on that run's tracks
    (and true chain) unless ``tracks``/``truth`` are given, and the result is written there
    (``metrics.json``; another tracks file: ``metrics_<stem>.json``); ``opts`` go to
    :func:`birdflow.evaluation.evaluate.evaluate_model`. A run evaluated after training (the
    default of ``bf.fit`` and ``birdflow train``) is not evaluated again: with no
    ``tracks``/``truth``/``opts`` its ``metrics.json`` is returned, unless ``recompute``.
    """
    from birdflow.evaluation.evaluate import evaluate_model, evaluate_run
    from birdflow.runs import read_metrics

    if not isinstance(model, BirdFlowModel):
        model = load_model(model)
    run_dir = getattr(model, "run_dir", None)
    if run_dir is not None and not (tracks or truth or opts or recompute):
        saved = read_metrics(run_dir)
        if saved.get("summary") and saved.get("options") == {} \
                and saved.get("stamp") == model_stamp(run_dir):
            return saved
    if run_dir is not None:
        return evaluate_run(run_dir, model=model, tracks=tracks, truth=truth, **opts)
    return evaluate_model(model, tracks, truth, **opts)


def validate(model: BirdFlowModel | str | os.PathLike, tracks: str | os.PathLike | None = None,
             *, season: str | None = None, out_dir: str | os.PathLike | None = None,
             **opts) -> dict:
    """Validate a model as ``birdflow validate``: calibration, migratory connectivity, route
    biology and decay with horizon, per data source, with a report.

    ``model`` is a model or a run dir; ``tracks`` defaults to the run's own. Files go to
    ``out_dir``, else ``<run dir>/validation/``; ``opts`` (``n_routes``, ``seed``) go to
    :func:`birdflow.evaluation.validation.validate_run`. Returns the figures of
    ``validation.json`` with ``report`` (the path of report.md).
    """
    from birdflow.evaluation.validation import validate_run

    if not isinstance(model, BirdFlowModel):
        model = load_model(model)
    return validate_run(model.run_dir, model=model, tracks=tracks, season=season,
                        out_dir=out_dir, **opts)


def apply_weights(cfg: DictConfig) -> DictConfig:
    """With ``weights=<tune dir>``, write the tune's weights into ``cfg.loss`` (in place).

    Sets loss.obs_weight, dist_weight, ent_weight, dist_pow, l2_norm (and w2.scale for W2)
    from :func:`birdflow.tuning.tunedir.read_weights` and prints them, so the saved config.yaml
    shows the weights used. A resumed run keeps its own saved config; ``weights`` does nothing there.

    Raises:
        ConfigError: the directory is not a tune dir, is a tune of another loss, or ``hyper.*``
            is also set.
    """
    if not cfg.get("weights") or cfg.get("resume"):
        return cfg
    from birdflow.tuning.tunedir import read_weights

    hyper = cfg.get("hyper") or {}
    if hyper.get("de_ratio") is not None or hyper.get("obs_prop") is not None:
        raise ConfigError(f"weights={cfg.weights} and hyper.de_ratio/obs_prop both set the loss "
                          "weights; keep one of them")
    w = read_weights(cfg.weights, str(cfg.loss.location))
    with open_dict(cfg):
        for key in ("obs_weight", "dist_weight", "ent_weight", "dist_pow", "l2_norm"):
            cfg.loss[key] = w[key]
        if "w2_scale" in w:
            cfg.loss.w2.scale = w["w2_scale"]
    print(f"weights from {w['tune_dir']} (tuned on species {w['species']}): obs_weight "
          f"{w['obs_weight']:g}, dist_weight {w['dist_weight']:.4g}, ent_weight "
          f"{w['ent_weight']:.4g}, dist_pow {w['dist_pow']:.3g}, l2_norm {w['l2_norm']}"
          + (f", w2.scale {w['w2_scale']:.4g}" if "w2_scale" in w else ""))
    return cfg


def after_training(cfg: DictConfig, run_dir: Path, model: BirdFlowModel, history: dict) -> None:
    """What a finished run also writes into its directory: loss curve, metrics, BirdFlowR export.

    When the run has tracks, its gain over the S&T-only null is printed and stored in
    ``run.json`` (``gain_over_null``), evaluated or not; a negative gain is a one-line warning.
    """
    if cfg.get("maps", True):
        from birdflow.evaluation.maps import plot_loss

        plot_loss(history, run_dir / "loss_curve.png")
    from birdflow.evaluation.gain import gain_over_null, report_gain

    summary = None
    if cfg.get("evaluate", True):
        from birdflow.evaluation.evaluate import evaluate_run

        summary = evaluate_run(run_dir, model=model)["summary"]
    report_gain(run_dir, gain_over_null(run_dir, model, summary))  # printed, in run.json
    if cfg.get("export", {}).get("hdf5", False):
        from birdflow.export import export_birdflowr

        export_birdflowr(model, run_dir=run_dir)


def _leaf_keys(values: Mapping, prefix: str = ""):
    for k, v in values.items():
        if isinstance(v, Mapping):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _fresh(path: Path) -> Path:
    """``path``, or ``path_1``, ``path_2``... when a run in the same second took it."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.name}_{k}")
    return candidate
