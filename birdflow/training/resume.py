"""``resume=<run dir>``: continue a run with its own saved config, and what may change.

A resumed run is the saved run, so its config decides everything that shapes the model and
the objective. Overrides given with ``resume=`` are applied when they are safe — more steps
(constant learning rate), evaluation and output switches, where the data cache lives — and
refused in one line naming them otherwise; a value equal to the saved one is no change.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from birdflow.errors import ConfigError
from birdflow.runs import resume_config

# keys (and key prefixes) that a resumed run may take from the command line
SAFE = ("evaluate", "maps", "progress", "tensorboard", "export", "checkpoint_every", "debug",
        "data.root", "data.download")
IGNORED = ("resume", "run_dir", "hydra")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _value(cfg: DictConfig, key: str):
    node = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def resumed_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """The saved config of ``cfg.resume`` (a run dir) with the safe ``overrides`` applied.

    ``cfg`` is the composed config of this call; ``overrides`` are the ``key=value`` strings
    the user gave (only their keys are read). Returns ``cfg`` itself unless ``resume`` names a
    directory.

    Raises:
        ConfigError: no saved config there, or an override would change the saved run.
    """
    if not cfg.get("resume") or cfg.resume is True:
        return cfg
    run_dir, old = resume_config(cfg.resume, "run directory written by `birdflow train`")
    refused, changes = [], {}
    for key in dict.fromkeys(_key(o) for o in overrides):
        if key.split(".")[0] in IGNORED or key.split("/")[0] in IGNORED:
            continue
        new, saved = _value(cfg, key), _value(old, key)
        if new == saved:
            continue
        if key == "optim.steps" and isinstance(new, int) and isinstance(saved, int) \
                and new > saved and _value(old, "optim.schedule") == "constant":
            changes[key] = new
        elif any(key == s or key.startswith(s + ".") for s in SAFE):
            changes[key] = new
        else:
            refused.append(f"{key}={new}")
    if refused:
        raise ConfigError(
            f"resume={run_dir}: cannot change {', '.join(refused)} on a resumed run (its saved "
            "config decides the model and the loss; more optim.steps with a constant schedule and "
            "evaluate/maps/progress/tensorboard/export/checkpoint_every may change); drop them, "
            "or start a new run with run_dir=<new dir>")
    with open_dict(old):
        for key, value in changes.items():
            OmegaConf.update(old, key, value, force_add=True)
        old.run_dir, old.resume = str(run_dir), True
    return old
