"""``birdflow transfer [transfer.species=[a,b,...]] [tune.steps=...] [run_dir=<dir>]``.

Leave-one-out transfer of tuned loss weights (:mod:`birdflow.tuning.transfer`): for each
species, θ tuned on the others (one pooled θ, and a linear trait model) against its own tuned
θ and the defaults, scored on its validation birds. Composes ``conf/transfer.yaml`` (the tune
config plus ``transfer.*``) once per species; writes ``transfer.csv``, ``transfer.md``,
``transfer.png`` and every run's trajectory into the run dir, and prints the table. Rerun with
the same ``run_dir`` and settings, a stopped run does only what it had not finished.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from birdflow.cli.command import command
from birdflow.errors import ConfigError
from birdflow.runs import read_config, write_config
from birdflow.tuning.transfer import TransferSettings, leave_one_out, markdown, setup


def _out_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def species_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """name -> the config with ``species`` replaced by ``conf/species/<name>.yaml`` (and the
    command line's ``species.*`` overrides, which apply to every species)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keep = [o for o in given if o.lstrip("+").startswith("species.")]  # e.g. species.res_km=150
    names = list(cfg.transfer.species or [])
    if len(names) < 3 or len(set(names)) != len(names):
        raise ConfigError(f"transfer.species={names}: list at least three different species "
                          "(each is scored with weights learned on the others)")
    out = {}
    for name in names:
        try:
            node = compose("transfer", [f"species={name}", *keep]).species
        except Exception as e:  # noqa: BLE001 - Hydra's missing-option error, as one line
            raise ConfigError(f"transfer.species: {name}: no such species config "
                              f"(conf/species/{name}.yaml): {' '.join(str(e).split())[:200]}") from None
        c = cfg.copy()
        with open_dict(c):
            c.species = node
        out[name] = c
    return out


SETTINGS = ("species", "loss", "tune", "transfer", "data", "model", "seed", "precision")


def _settings(cfg: DictConfig) -> dict:
    """The keys of ``cfg`` that decide a transfer table's values (:data:`SETTINGS`)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    return {k: full.get(k) for k in SETTINGS}


def _check_resumable(out_dir: Path, cfg: DictConfig) -> None:
    """A run dir with a (partial) table is resumed only with the settings that made it."""
    if not (out_dir / "transfer.csv").exists():
        return
    old, new = read_config(out_dir), _settings(cfg)
    made = _settings(old) if old is not None else {}
    differ = sorted(k for k in SETTINGS if made.get(k, object()) != new[k])
    if differ:
        raise ConfigError(f"run_dir={out_dir}: its transfer.csv was made with other settings "
                          f"({', '.join(differ)} differ from its config.yaml); rerun with the "
                          "same settings to finish it, or give a new run_dir")


@command("transfer", "birdflow transfer")
def main(cfg: DictConfig):
    t = cfg.transfer
    tr = TransferSettings(tuple(t.traits), float(t.ridge), float(t.slope_bound),
                          t.own_steps, t.joint_steps)
    cfgs = species_configs(cfg)  # a wrong name fails before anything is written
    out_dir = _out_dir(cfg)
    _check_resumable(out_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, cfg)
    t0 = time.perf_counter()
    species, ts = setup(cfgs, cfg.precision)
    table = leave_one_out(species, ts, tr, out_dir)
    print(markdown(table), end="")
    print(f"leave-one-out over {len(species)} species in {time.perf_counter() - t0:.0f} s wall "
          f"time: {out_dir / 'transfer.csv'}, {out_dir / 'transfer.png'}")
    return table


if __name__ == "__main__":
    main()
