"""A fitted model in numpy: marginals on the BirdFlowData grid, saved as NetCDF.

This is the form evaluate, routes, maps, compare and export read, whatever produced the
model: our training (from logits) or an imported BirdFlowR HDF5 file (from its marginals).
Everything is derived from the joint marginals ``M[t]`` (transition t: week t -> t + 1) held
in the slot layout of :class:`birdflow.model.markov.WeekIndex`, dense or neighbourhood-sparse
(read one transition at a time through :mod:`birdflow.model.joints`). Files:
:mod:`birdflow.model.modelfile`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from birdflow.data.seasons import season_span
from birdflow.errors import ConfigError
from birdflow.model import joints, starts
from birdflow.model.markov import WeekIndex
from birdflow.model.modelfile import DATA_FILE, MODEL_FILE, load_model, save_model
from birdflow.model.sampling import routes_table, sample_cells
from birdflow.model.timeline import Timeline, timeline, week_position

__all__ = ["DATA_FILE", "MODEL_FILE", "BirdFlowModel", "load_model", "save_model"]


@dataclass(repr=False)
class BirdFlowModel:
    """Fitted chain. ``marginals`` is (n_transitions, n_max, n_max) in the slot layout, or
    (n_transitions, n_max, K) paired with ``index.nbr`` for a neighbourhood-sparse model
    (:mod:`birdflow.model.joints`; every method then works one week at a time).

    ``run_dir`` is where it was saved or read from (None for a model only in memory).
    """

    data: xr.Dataset
    index: WeekIndex
    marginals: np.ndarray
    hyperparameters: dict = field(default_factory=dict)
    loss_history: dict[str, np.ndarray] = field(default_factory=dict)
    run_dir: Path | None = None

    def __post_init__(self):
        if self.index.sparse:
            joints.check_shape(self.index, self.marginals)

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
        if self.sparse:
            lines.append(f"  neighbourhood-sparse, {self.index.n_neighbours} per row, "
                         f"{int((self.index.nbr >= 0).sum())} pairs kept")
        if a.get("sparse"):  # birdflow.model.sparsify
            st = json.loads(a["sparse"])
            lines.append(f"  sparse ({st['method']}, p={st['p']:g}): density "
                         f"{st['density_after']:.3f}, {st['pct_density_lost']:.2f}% mass lost")
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

    @property
    def sparse(self) -> bool:
        """True for neighbourhood-sparse joints (``index.nbr`` set)."""
        return self.index.sparse

    def joint_dense_at(self, t: int) -> np.ndarray:
        """(n_max, n_max) joint of transition t in the slot layout; one week densified."""
        return joints.dense_joint(self.index, self.marginals, t)

    def marginal(self, when) -> np.ndarray:
        """Joint of the transition from ``when`` (a date or 1-based S&T week) to the next week,
        as (n_t, n_{t+1}) over the two weeks' active cells (BirdFlowR's stored form)."""
        return self.marginal_at(week_position(self.data, when, "when"))

    def distr(self, when) -> np.ndarray:
        """Model distribution over all cells in the week of ``when`` (a date or S&T week)."""
        return self.distr_at(week_position(self.data, when, "when"))

    def transition(self, when) -> np.ndarray:
        """Dense (n_cells, n_cells) row-stochastic transition from ``when``'s week to the next."""
        return self.transition_at(week_position(self.data, when, "when"))

    # The *_at methods take 0-based positions in the model's weeks (transition t: position t ->
    # t + 1): the form the rest of the package computes in. Public code speaks dates or weeks.

    def marginal_at(self, t: int) -> np.ndarray:
        """Joint of transition t as (n_t, n_{t+1}) in dmi order, as BirdFlowR stores it."""
        nf = int(self.index.valid[t % self.index.n_weeks].sum())
        nt = int(self.index.valid[(t + 1) % self.index.n_weeks].sum())
        return self.joint_dense_at(t)[:nf, :nt]

    def _scatter(self, t_week: int, slot_vals: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_cells)
        sc = self.index.slot_cell[t_week % self.index.n_weeks]
        ok = sc >= 0
        out[sc[ok]] = slot_vals[ok]
        return out

    def distr_at(self, t: int) -> np.ndarray:
        """Model distribution over active cells at marginal-week t (0..n_transitions)."""
        if t < self.n_transitions:
            return self._scatter(t, joints.row_sums(self.index, self.marginals, t))
        return self._scatter(t, joints.col_sums(self.index, self.marginals, t - 1))

    def distrs(self) -> np.ndarray:
        """(n_weeks, n_cells) model distributions of weeks 1..T (row sums of each marginal)."""
        return np.stack([self.distr_at(t) for t in range(self.index.n_weeks)])

    def transition_at(self, t: int) -> np.ndarray:
        """Dense (n_cells, n_cells) row-stochastic transition t; rows with no mass are zero."""
        M = self.joint_dense_at(t)
        rows = M.sum(axis=1, keepdims=True)
        P = np.divide(M, rows, out=np.zeros_like(M, dtype=np.float64), where=rows > 0)
        out = np.zeros((self.n_cells, self.n_cells))
        sf = self.index.slot_cell[t % self.index.n_weeks]
        st = self.index.slot_cell[(t + 1) % self.index.n_weeks]
        fi, ti = np.flatnonzero(sf >= 0), np.flatnonzero(st >= 0)
        out[np.ix_(sf[fi], st[ti])] = P[np.ix_(fi, ti)]
        return out

    def timeline(self, start=None, end=None, *, n_steps: int | None = None,
                 direction: str | None = None, season: str | None = None,
                 season_buffer: int = 1) -> Timeline:
        """Steps from ``start`` to ``end``: see :func:`birdflow.model.timeline.timeline`.

        ``season`` ("prebreeding", "breeding", ... or an alias) replaces start and end by the
        season's weeks widened by ``season_buffer`` weeks (:func:`season_span`); ``start``
        None is the model's first week.
        """
        if season is not None:
            if start is not None or end is not None:
                raise ConfigError(f"season={season} sets the start and end; leave them out")
            w0, w1 = season_span(self.data, season, buffer=season_buffer)
            start, end = (w1, w0) if direction == "backward" else (w0, w1)
        start = int(self.data["week"].values[0]) if start is None else start
        return timeline(self.data, self.cyclic, start, end, n_steps=n_steps, direction=direction)

    def propagate(self, distr: np.ndarray, tl: Timeline) -> np.ndarray:
        """Push (k, n_cells) distributions along ``tl``: returns (n_steps + 1, k, n_cells).

        Forward steps use ``M_t / rowsum``, backward steps ``(M_t / colsum)^T``; mass on cells
        with no probability onward (outside the week's support) is dropped.
        """
        d = np.atleast_2d(np.asarray(distr, dtype=np.float64))
        out = [d]
        sc = self.index.slot_cell
        for k, t in enumerate(tl.transitions):
            here, there = sc[tl.positions[k]], sc[tl.positions[k + 1]]
            norm = (joints.row_sums if tl.sign > 0 else joints.col_sums)(self.index,
                                                                          self.marginals, t)
            x = np.where(here >= 0, out[-1][:, np.maximum(here, 0)], 0.0)  # (k, n_max)
            x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
            y = joints.push(self.index, self.marginals, t, x, transpose=tl.sign < 0)
            nxt = np.zeros_like(d)
            ok = there >= 0
            nxt[:, there[ok]] = y[:, ok]
            out.append(nxt)
        return np.stack(out)

    def predict(self, distr_or_point, start=None, end=None, *, n_steps: int | None = None,
                direction: str | None = None, season: str | None = None) -> xr.DataArray:
        """Where birds at ``distr_or_point`` on ``start`` are at each week up to ``end``.

        Args:
            distr_or_point: a distribution over active cells, (n_cells,) or (k, n_cells); or a
                point (lon, lat) in degrees, or (k, 2) points (each becomes a one-hot).
            start, end: dates or 1-based S&T week numbers (dates imply the direction).
            n_steps: weekly steps when ``end`` is None.
            direction: "forward" (default) or "backward" (transposed 2-way marginals).
            season: predict over a season (instead of start/end), see :meth:`timeline`.

        Returns:
            DataArray (time, cell) or (time, start, cell) of probabilities, with coordinates
            ``date``, ``week`` and ``timestep`` (1-based model week) along ``time``.
            Input mass on cells the start week cannot hold is dropped with a warning.

        Raises:
            ConfigError: dates/weeks outside the model; DataError: a point outside the mask.
        """
        tl = self.timeline(start, end, n_steps=n_steps, direction=direction, season=season)
        d, single = starts.start_distributions(self, distr_or_point, tl.positions[0])
        support = self.support(tl)
        lost = d[:, ~support].sum(axis=1)
        if np.any(lost > 1e-12 * np.maximum(d.sum(axis=1), 1e-300)):
            warnings.warn(f"{float(lost.max()):.3g} of the start mass lies on cells the model "
                          f"cannot move from in S&T week {int(tl.weeks[0])}; it is dropped",
                          stacklevel=2)
        seq = self.propagate(np.where(support, d, 0.0), tl)
        coords = {"date": ("time", tl.dates.values), "week": ("time", tl.weeks),
                  "timestep": ("time", tl.positions + 1)}
        if single:
            return xr.DataArray(seq[:, 0], dims=("time", "cell"), coords=coords, name="distr")
        return xr.DataArray(seq, dims=("time", "start", "cell"), coords=coords, name="distr")

    def support(self, tl: Timeline) -> np.ndarray:
        """(n_cells,) bool: cells of the first week of ``tl`` with probability onward."""
        if not tl.n_steps:
            return self.distr_at(tl.positions[0]) > 0
        sums = joints.row_sums if tl.sign > 0 else joints.col_sums
        return self._scatter(tl.positions[0],
                             sums(self.index, self.marginals, tl.transitions[0])) > 0

    def route(self, n: int = 1, start=None, end=None, *, n_steps: int | None = None,
              direction: str | None = None, lonlat=None, distr: np.ndarray | None = None,
              from_marginals: bool = False, season: str | None = None, season_buffer: int = 1,
              seed: int = 0) -> pd.DataFrame:
        """Sample routes: BirdFlowR's ``route()`` (reference §4.3).

        Args:
            n: routes per start point, or routes in all when sampling the starts.
            start, end: dates or 1-based S&T week numbers; or ``n_steps`` weekly steps.
            season, season_buffer: route over a season instead (BirdFlowR's
                ``route(season = ...)``, buffered by 1 week), see :meth:`timeline`.
            direction: "forward" (default; implied by dates) or "backward".
            lonlat: (lon, lat) or (k, 2) start points in degrees; each starts ``n`` routes.
            distr: (n_cells,) distribution to draw the ``n`` start cells from.
            from_marginals: with neither, draw starts from the model's distribution of the
                start week instead of the S&T one (BirdFlowR's default is S&T).
            seed: numpy random seed.

        Returns:
            The route table of :mod:`birdflow.model.sampling` (BirdFlowRoutes columns).
        """
        if int(n) < 1:
            raise ConfigError(f"n={n}: the number of routes must be >= 1")
        tl = self.timeline(start, end, n_steps=n_steps, direction=direction, season=season,
                           season_buffer=season_buffer)
        rng = np.random.default_rng(seed)
        cells = starts.start_cells(self, tl, int(n), lonlat=lonlat, distr=distr,
                                   from_marginals=from_marginals, rng=rng)
        return routes_table(self, sample_cells(self, cells, tl, rng), tl)

    def forecast_at(self, start: np.ndarray, t_from: int, n_steps: int) -> np.ndarray:
        """Project a cell distribution from week index t_from: (n_steps + 1, n_cells)."""
        out = [np.asarray(start, dtype=np.float64)]
        for k in range(n_steps):
            t = t_from + k
            if not self.cyclic and t >= self.n_transitions:
                raise ValueError(f"a truncated model has no transition after week index {t}")
            out.append(self._step_cells(out[-1], t % self.n_transitions))
        return np.stack(out)

    def _step_cells(self, d: np.ndarray, t: int) -> np.ndarray:
        """Cell distribution ``d`` one step through transition t (slot space when sparse)."""
        if not self.sparse:
            return d @ self.transition_at(t)
        sf = self.index.slot_cell[t % self.index.n_weeks]
        x = np.where(sf >= 0, d[np.maximum(sf, 0)], 0.0)
        y = joints.Transitions(self.index, self.marginals).step(t, x)
        return self._scatter(t + 1, y)
