"""Training checkpoints: the whole training state as one ``.npz`` per saved step.

The state pytree (parameters, optimizer state, warm-start potentials, step) is flattened to
its leaves; loading unflattens them into a template built from the same config, so a resumed
run continues bit-for-bit where the killed one stopped.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import jax
import numpy as np

from birdflow.errors import DataError
from birdflow.io import atomic_path

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d{8})\.npz$")


def save_checkpoint(run_dir: Path, step: int, state, history: dict[str, list], keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>.npz`` atomically and keep the newest ``keep`` files."""
    folder = Path(run_dir) / CKPT_DIR
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["history"] = np.frombuffer(json.dumps(history).encode(), dtype=np.uint8)
    path = folder / f"step_{step:08d}.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, step=np.int64(step), n_leaves=np.int64(len(leaves)), **arrays)
    for old in sorted(folder.glob("step_*.npz"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    files = sorted(p for p in (Path(run_dir) / CKPT_DIR).glob("step_*.npz") if _NAME.match(p.name))
    return files[-1] if files else None


def load_checkpoint(path: Path, template) -> tuple[int, object, dict[str, list]]:
    """Restore (step, state, history) from ``path`` into the structure of ``template``."""
    try:
        with np.load(path) as f:
            n = int(f["n_leaves"])
            leaves = [f[f"leaf_{i:04d}"] for i in range(n)]
            step = int(f["step"])
            history = json.loads(bytes(f["history"]).decode())
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        first = " ".join(str(e).split())[:160]
        raise DataError(f"{path}: unreadable checkpoint ({type(e).__name__}: {first}); delete it "
                        "to resume from the previous one") from None
    treedef = jax.tree_util.tree_structure(template)
    if treedef.num_leaves != n:
        raise DataError(f"{path}: checkpoint has {n} arrays but this config needs {treedef.num_leaves}; "
                        "resume with the run's own config.yaml (do not change the model or loss)")
    ref = jax.tree_util.tree_leaves(template)
    for i, (a, b) in enumerate(zip(leaves, ref, strict=True)):
        if np.shape(a) != np.shape(b):
            raise DataError(f"{path}: array {i} has shape {np.shape(a)}, expected {np.shape(b)}; "
                            "the data or model size changed since the checkpoint was written")
    state = jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(x, dtype=np.asarray(r).dtype)
                                                   for x, r in zip(leaves, ref, strict=True)])
    return step, state, history


def resume_from(run_dir: Path, state, resume) -> tuple[int, object, dict]:
    """(first step, state, history): from the latest checkpoint when ``resume``, else a fresh start."""
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is None:
        return 0, state, {}
    return load_checkpoint(ckpt, state)
