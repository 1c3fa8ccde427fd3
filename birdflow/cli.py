"""``key=value`` command-line arguments for the small CLIs (evaluate, routes, maps, export)."""

from __future__ import annotations

from collections.abc import Iterable

from birdflow.errors import ConfigError


def parse_key_values(argv: Iterable[str], allowed: Iterable[str], usage: str = "") -> dict[str, str]:
    """``["run=dir", "n=5"]`` -> ``{"run": "dir", "n": "5"}``; ConfigError names a bad argument.

    A leading ``+`` (Hydra's habit for new keys) is ignored.
    """
    allowed = sorted(allowed)
    out: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key not in allowed:
            raise ConfigError(f"argument {arg!r} not understood: expected key=value with key in "
                              f"{allowed}" + (f"; {usage}" if usage else ""))
        out[key] = value.strip()
    return out
