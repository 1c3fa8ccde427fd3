"""``config.yaml``: the resolved config a run was made with (and a Hydra job dir's config).

Values are stored resolved, except environment interpolations (``${oc.env:NAME}``), which stay
as written: a run dir never holds the value of an environment variable (an API key), and a
resumed run takes it from the environment of whoever resumes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from birdflow.errors import ConfigError, DataError
from birdflow.io import write_text_atomic
from birdflow.runs.layout import CONFIG_YAML, HYDRA_JOB_CONFIG

_ENV = "${oc.env:"


def _keep_env(raw, resolved):
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {k: _keep_env(raw.get(k), v) for k, v in resolved.items()}
    if isinstance(raw, list) and isinstance(resolved, list) and len(raw) == len(resolved):
        return [_keep_env(a, b) for a, b in zip(raw, resolved, strict=True)]
    if isinstance(raw, str) and _ENV in raw:
        return raw
    return resolved


def write_config(run_dir: str | os.PathLike, cfg: DictConfig) -> Path:
    """Write ``config.yaml`` (atomic): resolved values, environment interpolations as written."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    text = OmegaConf.to_yaml(OmegaConf.create(_keep_env(raw, resolved)))
    return write_text_atomic(Path(run_dir) / CONFIG_YAML, text)


def _load(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError) as e:
        first = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: not a readable YAML config ({first}); restore it from the "
                        "run's copy or re-run training") from None
    if not isinstance(cfg, DictConfig):
        raise DataError(f"{path}: not a YAML mapping; restore it or re-run training")
    return cfg


def read_config(run_dir: str | os.PathLike) -> DictConfig | None:
    """The run's saved config, or None when the run dir has none (an imported model)."""
    path = Path(run_dir) / CONFIG_YAML
    return _load(path) if path.exists() else None


def resume_config(resume, written_by: str) -> tuple[Path, DictConfig]:
    """``resume=<dir>``: the dir and its saved config (``written_by`` names the command's output
    in the error, e.g. "run directory written by `birdflow train`")."""
    run_dir = Path(str(resume))
    old = read_config(run_dir)
    if old is None:
        raise ConfigError(f"resume={run_dir}: no saved config there; pass a {written_by}")
    return run_dir, old


def read_job_config(job_dir: str | os.PathLike) -> DictConfig | None:
    """A sweep job's config: the run's ``config.yaml``, else Hydra's ``.hydra/config.yaml``."""
    cfg = read_config(job_dir)
    if cfg is not None:
        return cfg
    path = Path(job_dir).joinpath(*HYDRA_JOB_CONFIG)
    return _load(path) if path.exists() else None
