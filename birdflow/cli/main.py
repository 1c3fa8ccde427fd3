"""``birdflow <command> [overrides]``: one command for every entry point.

``birdflow train loss=w2`` runs what ``python -m birdflow.train loss=w2`` runs; the arguments
after the command go to that command unchanged.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "birdflow.cli.train", "tune": "birdflow.cli.tune", "evaluate": "birdflow.cli.evaluate",
    "routes": "birdflow.cli.routes", "maps": "birdflow.cli.maps", "compare": "birdflow.cli.compare",
    "export": "birdflow.cli.export", "sweep": "birdflow.cli.sweep",
    "preprocess": "birdflow.cli.preprocess", "download": "birdflow.cli.download",
    "bench": "birdflow.cli.bench", "synthetic": "birdflow.cli.synthetic",
    "sparsify": "birdflow.cli.sparsify", "validate": "birdflow.cli.validate",
    "batch": "birdflow.cli.batch", "catalog": "birdflow.cli.catalog",
    "transfer": "birdflow.cli.transfer",
}


def _usage() -> str:
    return ("usage: birdflow <command> [key=value ...]   (birdflow <command> --help for its options)\n"
            "commands: " + ", ".join(COMMANDS))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"birdflow: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd])
    sys.argv = [f"birdflow {cmd}", *rest]
    result = module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
