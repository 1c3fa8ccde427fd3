"""One grammar for every command: a Hydra app over ``conf/<command>.yaml`` with one error style.

:func:`birdflow.cli.command.command` turns ``task(cfg)`` into the ``main()`` of a command, with
the composition and the error style defined here. Every command then takes
Hydra's grammar (``key=value``, ``+key=``, ``~key``, ``null``, typed values, ``--help``,
``--cfg job``, ``-m`` multiruns) and fails the same way on user errors: one line on stderr,
``birdflow <command>: error: <what, where, the fix>``, exit status 2, no traceback. Before
Hydra runs, the overrides of a single run are composed once here, so that an unknown key, a
malformed override or a word where the config holds a number is reported in that style too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from birdflow.errors import ConfigError

CONF_MODULE = "birdflow.conf"


def fail(prog: str, message: str) -> None:
    """Print ``birdflow <prog>: error: <message>`` (first line only) and exit with status 2."""
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"{prog}: error: {line}", file=sys.stderr)
    raise SystemExit(2)


def compose(config_name: str, overrides: Sequence[str] = (), *,
            hydra_node: bool = False) -> DictConfig:
    """The config a command would run with, composed from the packaged ``conf/`` (no Hydra runtime).

    Raises:
        ConfigError: an override names an unknown key or group option, is malformed, or puts a
            word where the config holds a number.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException

    overrides = list(overrides)
    choices = [o for o in overrides if _is_group_choice(o) or o.startswith("hydra.searchpath")]
    with initialize_config_module(CONF_MODULE, version_base="1.3"):
        try:
            base = hydra_compose(config_name, choices, return_hydra_config=True)
            cfg = hydra_compose(config_name, overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(_explain(config_name, overrides, e, locals().get("base"))) from None
    check_types(cfg, base, [o.lstrip("+").split("=", 1)[0] for o in overrides if "=" in o])
    if not hydra_node:
        with _open(cfg):
            del cfg["hydra"]
    return cfg


def _open(cfg: DictConfig):
    from omegaconf import open_dict

    return open_dict(cfg)


def is_group(key: str) -> bool:
    """``species`` / ``loss`` / ``hydra/launcher``: a config group of the packaged ``conf/``."""
    from importlib import resources

    node = resources.files(CONF_MODULE)
    for part in key.lstrip("+~").split("/"):
        node = node / part
    return node.is_dir()


def _is_group_choice(override: str) -> bool:
    """``species=amewoo`` / ``loss=w2`` / ``hydra/launcher=slurm``: a config-group choice."""
    return "=" in override and is_group(override.split("=", 1)[0])


def _explain(config_name: str, overrides: list[str], e: Exception,
             base: DictConfig | None = None) -> str:
    text = " ".join(str(e).split())
    cause = e.__cause__ or e.__context__
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        key = cause.full_key  # a structured config's type check (birdflow.cli.settings)
        given = next((o.lstrip("+") for o in overrides if o.lstrip("+").split("=", 1)[0] == key),
                     key)
        value = given.split("=", 1)[1] if "=" in given else "?"
        why = str(cause).splitlines()[0]
        default = OmegaConf.select(base, key, default=None) if base is not None else None
        if "Float" in why or "Integer" in why:
            return (f"{key}={value!r}: must be a number "
                    + (f"(the default is {default})" if default is not None else "(or null)"))
        if "bool" in why.lower():
            return f"{key}={value!r}: must be true or false"
        return f"{key}={value!r}: {why}"
    if "Could not override" in text or "not in struct" in text or (
            cause is not None and "not in struct" in str(cause)):
        key = text.split("'")[1] if "'" in text else "?"
        given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
        return (f"{given}: unknown key {key!r} for conf/{config_name}.yaml; check the spelling "
                f"(`--cfg job` prints every key), or add a new key with +{key}=<value>")
    if "Could not find" in text or "In '" in text and "Could not load" in text:
        return f"{text}; the options of each group are the files in conf/<group>/"
    if "LexerNoViableAlt" in text or "token recognition error" in text:
        return (f"{text.split(' See https')[0]}: a value Hydra cannot read unquoted; quote it "
                "inside the argument, e.g. 'run=\"/path/with, commas\"' (a value with spaces or "
                "accents works as it is)")
    return f"{text} (overrides: {' '.join(overrides) or 'none'})"


def check_types(cfg: DictConfig, base: DictConfig, keys: Sequence[str]) -> None:
    """A number (or true/false) in the packaged config must stay one: ``n=abc`` fails, by key.

    ``base`` is the config before the values of ``keys`` (dotted) were set in ``cfg``.
    """
    for key in keys:
        if key.startswith(("~", "hydra.")):
            continue
        default = OmegaConf.select(base, key, default=None)
        value = OmegaConf.select(cfg, key, default=None)
        is_number = isinstance(default, int | float) and not isinstance(default, bool)
        if is_number and not (isinstance(value, int | float) and not isinstance(value, bool)) \
                and value is not None:
            raise ConfigError(f"{key}={value!r}: must be a number (the default is {default})")
        if isinstance(default, bool) and value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: must be true or false")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for the flag-style benchmark, failing in the same one-line style (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(self.prog, f"{message} (see `{self.prog} --help`)")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (never a stale stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def console_logging() -> None:
    """INFO messages of ``birdflow.*`` on stderr, once per process (commands call this).

    Hydra's own logging setup is off in every command config: ``logging.config.dictConfig``
    closes every existing handler, which breaks callers that run a command in-process.
    """
    lg = logging.getLogger("birdflow")
    if not any(isinstance(h, _ConsoleHandler) for h in lg.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
