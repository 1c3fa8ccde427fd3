"""A fitted model in numpy: marginals on the BirdFlowData grid, saved as NetCDF.

This is the form evaluate, routes, maps, compare and export read, whatever produced the
model: our training (from logits) or an imported BirdFlowR HDF5 file (from its marginals).
Everything is derived from the joint marginals ``M[t]`` (transition t: week t -> t + 1) held
in the slot layout of :class:`birdflow.model.markov.WeekIndex`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from birdflow.data.bfdata import load_bfdata, save_bfdata
from birdflow.errors import DataError
from birdflow.io import atomic_path
from birdflow.model.markov import WeekIndex

MODEL_FILE = "model.nc"
DATA_FILE = "data.nc"


@dataclass(repr=False)
class BirdFlowModel:
    """Fitted chain. ``marginals`` is (n_transitions, n_max, n_max) in the slot layout.

    ``run_dir`` is where it was saved or read from (None for a model only in memory).
    """

    data: xr.Dataset
    index: WeekIndex
    marginals: np.ndarray
    hyperparameters: dict = field(default_factory=dict)
    loss_history: dict[str, np.ndarray] = field(default_factory=dict)
    run_dir: Path | None = None

    def __repr__(self) -> str:
        a, hp = self.data.attrs, self.hyperparameters
        weeks = self.data["week"].values
        per_week = self.index.valid.sum(axis=1)
        fit = ", ".join(f"{k}={hp[k]:g}" for k in ("ent_weight", "dist_weight", "dist_pow")
                        if isinstance(hp.get(k), int | float))
        lines = [
            f"BirdFlowModel: {a.get('common_name') or a.get('species_code', '?')} "
            f"({a.get('species_code', '?')}), {a.get('res_km', '?')} km cells",
            f"  {self.n_cells} cells ({per_week.min()}-{per_week.max()} per week), weeks "
            f"{int(weeks[0])}-{int(weeks[-1])} ({'cyclic' if self.cyclic else 'truncated'}), "
            f"{self.n_transitions} transitions",
            f"  location loss {hp.get('location_loss', '?')}" + (f"; {fit}" if fit else ""),
        ]
        if self.run_dir is not None:
            lines.append(f"  run dir {self.run_dir}")
        return "\n".join(lines)

    @property
    def n_cells(self) -> int:
        return self.data.sizes["cell"]

    @property
    def n_transitions(self) -> int:
        return self.index.n_transitions

    @property
    def cyclic(self) -> bool:
        return self.index.cyclic

    def marginal(self, t: int) -> np.ndarray:
        """Joint of transition t as (n_t, n_{t+1}) in dmi order, as BirdFlowR stores it."""
        nf = int(self.index.valid[t % self.index.n_weeks].sum())
        nt = int(self.index.valid[(t + 1) % self.index.n_weeks].sum())
        return self.marginals[t, :nf, :nt]

    def _scatter(self, t_week: int, slot_vals: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_cells)
        sc = self.index.slot_cell[t_week % self.index.n_weeks]
        ok = sc >= 0
        out[sc[ok]] = slot_vals[ok]
        return out

    def distr(self, t: int) -> np.ndarray:
        """Model distribution over active cells at marginal-week t (0..n_transitions)."""
        if t < self.n_transitions:
            return self._scatter(t, self.marginals[t].sum(axis=1))
        return self._scatter(t, self.marginals[t - 1].sum(axis=0))

    def distrs(self) -> np.ndarray:
        """(n_weeks, n_cells) model distributions of weeks 1..T (row sums of each marginal)."""
        return np.stack([self.distr(t) for t in range(self.index.n_weeks)])

    def transition(self, t: int) -> np.ndarray:
        """Dense (n_cells, n_cells) row-stochastic transition t; rows with no mass are zero."""
        M = self.marginals[t]
        rows = M.sum(axis=1, keepdims=True)
        P = np.divide(M, rows, out=np.zeros_like(M, dtype=np.float64), where=rows > 0)
        out = np.zeros((self.n_cells, self.n_cells))
        sf = self.index.slot_cell[t % self.index.n_weeks]
        st = self.index.slot_cell[(t + 1) % self.index.n_weeks]
        fi, ti = np.flatnonzero(sf >= 0), np.flatnonzero(st >= 0)
        out[np.ix_(sf[fi], st[ti])] = P[np.ix_(fi, ti)]
        return out

    def forecast(self, start: np.ndarray, t_from: int, n_steps: int) -> np.ndarray:
        """Project a cell distribution from week index t_from: (n_steps + 1, n_cells)."""
        out = [np.asarray(start, dtype=np.float64)]
        for k in range(n_steps):
            t = t_from + k
            if not self.cyclic and t >= self.n_transitions:
                raise ValueError(f"a truncated model has no transition after week index {t}")
            out.append(out[-1] @ self.transition(t % self.n_transitions))
        return np.stack(out)


def save_model(model: BirdFlowModel, run_dir: str | os.PathLike) -> Path:
    """Write ``model.nc`` (marginals, slot layout, hyperparameters, losses) and ``data.nc``."""
    run_dir = Path(run_dir)
    ds = xr.Dataset(
        {
            "marginals": (("transition", "slot", "slot_to"), model.marginals.astype(np.float32)),
            "slot_cell": (("week", "slot"), model.index.slot_cell),
            "mu": (("week", "cell"), model.distrs()),
        },
        attrs={"cyclic": int(model.cyclic), "hyperparameters": json.dumps(model.hyperparameters)},
    )
    for name, values in model.loss_history.items():
        ds[f"loss_{name}"] = ("step", np.asarray(values, dtype=np.float64))
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    save_bfdata(model.data, run_dir / DATA_FILE)
    return run_dir / MODEL_FILE


def load_model(run_dir: str | os.PathLike) -> BirdFlowModel:
    """Read a model written by :func:`save_model` from a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.exists():
        raise DataError(f"{path}: no fitted model here; pass the run directory that "
                        "`python -m birdflow.train` printed (outputs/<species>/<loss>/<timestamp>)")
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load()
    data = load_bfdata(run_dir / DATA_FILE)
    index = WeekIndex(slot_cell=ds["slot_cell"].values.astype(np.int32), cyclic=bool(ds.attrs["cyclic"]))
    losses = {k[5:]: ds[k].values for k in ds.data_vars if k.startswith("loss_")}
    return BirdFlowModel(data=data, index=index, marginals=ds["marginals"].values.astype(np.float64),
                         hyperparameters=json.loads(ds.attrs.get("hyperparameters", "{}")),
                         loss_history=losses, run_dir=run_dir)
