"""The ``main()`` of every command: a Hydra app over ``conf/<command>.yaml`` with one error style.

:func:`command` wraps ``task(cfg)``: the overrides of a single run are composed once first
(:func:`birdflow.app.compose`), so an unknown key, a malformed override or a word where a number
belongs fails as one line; a :class:`birdflow.errors.BirdFlowError` raised by the task does
too (``birdflow <command>: error: ...``, exit status 2, no traceback).
"""

from __future__ import annotations

import errno
import functools
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from birdflow.app import CONF_MODULE, compose, console_logging, fail
from birdflow.errors import BirdFlowError, ConfigError


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _plain_run(argv: list[str]) -> bool:
    """True for a single run without Hydra flags (those go to Hydra as they are)."""
    return not any(a.startswith("-") for a in argv)


def _remove_if_empty(folder: str | None) -> None:
    """Remove Hydra's run dir (and its empty parents below the working directory) when the
    command left nothing there but Hydra's own ``.hydra/`` record: ``run_dir=``/``resume=``
    calls and rejected runs leave no folder behind."""
    if folder is None:
        return
    here, path = Path.cwd().resolve(), Path(folder).resolve()
    if path == here or not path.is_relative_to(here) or not path.is_dir():
        return
    if {p.name for p in path.iterdir()} <= {".hydra"}:
        shutil.rmtree(path)
        path = path.parent
        while path != here and path.is_relative_to(here) and not any(path.iterdir()):
            path.rmdir()
            path = path.parent


NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_line(e: OSError) -> str:
    """One line for an operating-system error on a file: what, where, and what to do.

    Every writer writes to a temporary name and renames (:mod:`birdflow.io`), so a failed
    write leaves the previous file (or none) in place, never a truncated one.
    """
    where = Path(e.filename)
    if e.errno in NO_SPACE:
        return (f"{where}: no space left to write it ({e.strerror}); free space or write "
                "elsewhere (run_dir=, out=); nothing half-written was left")
    if e.errno in NOT_WRITABLE:
        return (f"{where}: cannot write there ({e.strerror}); choose a writable folder "
                "(run_dir=, out=) or change its permissions; nothing half-written was left")
    return f"{where}: {e.strerror or e}"


_GRAMMAR = set(",[]{}()'\"$\\=")
_PLAIN = set(" /-+.%*@?|:_~!^&<>;")


def quote_value(arg: str) -> str:
    """``key=value`` with the value quoted when it holds letters Hydra's override grammar does
    not take unquoted (``run=/data/Grive à dos/run`` -> ``run='/data/Grive à dos/run'``).

    Values with grammar characters (lists, sweeps, interpolations, quotes) are left alone.
    """
    if "=" not in arg or arg.startswith("-"):
        return arg
    key, value = arg.split("=", 1)
    if all(c.isascii() and (c.isalnum() or c in _PLAIN) for c in value) or set(value) & _GRAMMAR:
        return arg
    return f"{key}='{value}'"


def command(config_name: str, prog: str) -> Callable[[Callable[[DictConfig], object]], Callable]:
    """Decorator: ``task(cfg)`` becomes a command ``main()`` with birdflow's grammar and errors.

    ``prog`` names the command in messages (``birdflow evaluate``). ``main(argv)`` takes the
    arguments after the command (default ``sys.argv[1:]``) and returns the task's result.
    """
    import hydra

    def decorate(task: Callable[[DictConfig], object]) -> Callable:
        result: dict = {}

        @functools.wraps(task)
        def guarded(cfg: DictConfig):
            if not _multirun():
                from hydra.core.hydra_config import HydraConfig

                result["output_dir"] = HydraConfig.get().runtime.output_dir
            try:
                result["value"] = task(cfg)
            except (BirdFlowError, OmegaConfBaseException):
                if _multirun():
                    raise  # Hydra records the job as failed and the sweep goes on
                _report(prog)
            except OSError as e:  # a read-only folder, a full disk, a file that vanished
                if _multirun() or not e.filename:
                    raise
                fail(prog, os_error_line(e))
            return result.get("value")

        def _report(prog: str) -> None:
            e = sys.exc_info()[1]
            if isinstance(e, MissingMandatoryValue):
                key = getattr(e, "full_key", None) or "?"
                fail(prog, f"{key}: missing; pass {key}=<value> (see `{prog} --help`)")
            fail(prog, str(e))

        app = hydra.main(version_base="1.3", config_path=f"pkg://{CONF_MODULE}",
                         config_name=config_name)(guarded)

        def main(argv: Sequence[str] | None = None):
            args = [quote_value(a) for a in (sys.argv[1:] if argv is None else argv)]
            if _plain_run(args):
                try:
                    compose(config_name, args)
                except ConfigError as e:
                    fail(prog, str(e))
            console_logging()
            saved = sys.argv
            sys.argv = [prog, *args]
            try:
                app()
            finally:
                sys.argv = saved
                _remove_if_empty(result.pop("output_dir", None))
            return result.get("value")

        main.task = task
        return main

    return decorate
