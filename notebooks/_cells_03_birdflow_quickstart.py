# %% [markdown]
# # 03 · BirdFlow quickstart: from an abundance raster to routes and forecasts
#
# BirdFlow turns the weekly relative-abundance maps of eBird Status & Trends (S&T) into a model of
# **movement**: a Markov chain whose week-*t* transition says, for a bird in a given grid cell, where it
# is likely to be one week later. The maps fix *how many* birds are where each week; the model has to
# work out *who goes where*, and it is fitted so that
#
# 1. its weekly distributions match the S&T maps (the **location** term),
# 2. birds do not fly further than they need to (the **distance** term), and
# 3. among movement patterns that do both, it prefers the less deterministic ones (the **entropy** term).
#
# This notebook runs the whole workflow on the package's built-in **synthetic species**, whose true
# movement chain is known, so we can check how close a fitted model gets to the truth:
#
# | step | here | command line |
# |---|---|---|
# | generate the synthetic species (raster, tracks, true chain) | `ensure_synthetic` | `python -m birdflow.synthetic` |
# | raster → BirdFlow data (grid, masks, distributions) | `load_or_preprocess` | `python -m birdflow.preprocess species=synthetic` |
# | fit with the L2 location loss | `train(cfg)` | `python -m birdflow.train species=synthetic loss=l2` |
# | fit with the W2 location loss | `train(cfg)` | `python -m birdflow.train species=synthetic loss=w2` |
# | evaluate | `evaluate_run` | `python -m birdflow.evaluate run=<run dir>` |
# | sample routes | `sample_routes`, `route_stats` | `python -m birdflow.routes run=<run dir> n=100` |
# | maps | `plot_distributions`, `plot_routes`, `plot_loss` | `python -m birdflow.maps run=<run dir>` |
#
# Everything runs on a CPU in about a minute. All files go to `outputs/notebook_03/` (`WORK` below): in the
# repository (where `outputs/` is git-ignored) when the notebook runs inside it, else in the current folder.

# %%
%matplotlib inline
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio
from hydra import compose, initialize_config_dir
from IPython.display import Image, display
from omegaconf import OmegaConf

import birdflow
from birdflow.data.preprocess import summary
from birdflow.synthetic import load_or_preprocess
from birdflow.synthetic.species import ensure_synthetic
from birdflow.data.weeks import date_to_week
from birdflow.evaluation.evaluate import evaluate_model, evaluate_run
from birdflow.evaluation.maps import plot_distributions, plot_loss, plot_routes
from birdflow.model.fitted import load_model
from birdflow.evaluation.routes import forecast, route_stats, sample_routes
from birdflow.training.loop import train

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a bare Jupyter kernel
REPO = Path(birdflow.__file__).resolve().parents[1]  # the checkout holding conf/
inside_repo = Path.cwd().resolve().is_relative_to(REPO)
WORK = (REPO if inside_repo else Path.cwd()) / "outputs" / "notebook_03"  # data cache, runs, figures
RUNS = WORK / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S")  # a fresh folder for each execution
print("config folder:", REPO / "conf")
print("data cache:   ", WORK / "data")
print("runs, figures:", RUNS)

# %% [markdown]
# ## 1 · The configuration
#
# The command-line tools are configured with [Hydra](https://hydra.cc): `conf/train.yaml` picks a species
# (`conf/species/synthetic.yaml`), a location loss (`conf/loss/l2.yaml` or `w2.yaml`), the optimiser
# (`conf/optim/adam.yaml`) and data folders (`conf/data/default.yaml`); any key can be overridden as
# `key=value`. Here we compose the same configuration in Python, with these overrides:
#
# * `species.synthetic.size=0.5` shrinks the synthetic scene so that training takes seconds (the number of
#   cells scales about as size²; section 3 prints it);
# * `optim.steps=300`, fewer than the configured default (`conf/optim/adam.yaml`, printed below);
# * `run_dir=…`, `data.root=…` put the run under `RUNS` and the data cache under `WORK`;
# * `progress=false`, `tensorboard=false`, `evaluate=false`, `maps=false`: no progress bar, no TensorBoard
#   logs, and no automatic evaluation or figures at the end of training — we run those steps ourselves below.
#   The command line does them by default, writing `metrics.json` and `loss_curve.png` into the run folder.

# %%
STEPS = 300
COMMON = ["species=synthetic", "species.synthetic.size=0.5", f"optim.steps={STEPS}",
          f"data.root={WORK / 'data'}", "progress=false", "tensorboard=false",
          "evaluate=false", "maps=false"]


def compose_train_cfg(name, *overrides):
    """The training config that `python -m birdflow.train <overrides>` would use, run dir RUNS/name."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[*COMMON, f"run_dir={RUNS / name}", *overrides])


cfg = compose_train_cfg("l2", "loss=l2")
with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
    print("default optim.steps:", compose("train").optim.steps, "| here:", cfg.optim.steps)
print(OmegaConf.to_yaml(cfg.species))

# %% [markdown]
# ## 2 · The synthetic species
#
# `ensure_synthetic` writes three things for the configured scene (or reuses them if they exist):
#
# * an S&T-like **GeoTIFF** with 52 weekly bands of relative abundance (ocean cells are "no data");
# * **tracks**: GPS-like fixes of birds sampled from the true chain, used to score the fitted models;
# * the **true chain** itself, saved like a fitted model.
#
# The species breeds around the Great Lakes, stops over on the way and winters in Central America.
# Below: the raw raster's first band (week 1, early January: the wintering range), and the true tracks
# of a few birds.

# %%
files = ensure_synthetic(cfg.species, Path(cfg.data.root) / "synthetic")
with rasterio.open(files.raster) as src:
    band1 = src.read(1, masked=True).filled(np.nan)  # "no data" (ocean) -> NaN, drawn blank
    print(f"{files.raster.name}: {src.count} bands of {src.height} x {src.width} cells, "
          f"{src.res[0] / 1e3:g} km, first band dated {src.descriptions[0]}")
    extent = (src.bounds.left / 1e3, src.bounds.right / 1e3, src.bounds.bottom / 1e3, src.bounds.top / 1e3)
print(f"band 1: {int(np.isfinite(band1).sum())} cells with data (land), {int((band1 > 0).sum())} of them "
      f"with the species present")

tracks = pd.read_csv(files.tracks, parse_dates=["date"])
print(f"tracks: {tracks['bird_id'].nunique()} birds, {len(tracks)} fixes, "
      f"{tracks['date'].min():%Y-%m-%d} .. {tracks['date'].max():%Y-%m-%d}")

fig, axes = plt.subplots(1, 2, figsize=(11, 5))
axes[0].imshow(np.where(np.isfinite(band1), 1.0, np.nan), extent=extent, cmap="Greys", vmin=0, vmax=4)
im = axes[0].imshow(np.where(band1 > 0, band1, np.nan), extent=extent, cmap="viridis")
axes[0].set(title="raw GeoTIFF, band 1 (grey: land, species absent)", xlabel="x (km, LAEA)",
            ylabel="y (km)")
fig.colorbar(im, ax=axes[0], shrink=0.8, label="relative abundance")
for bird, fixes in list(tracks.groupby("bird_id"))[:6]:
    axes[1].plot(fixes["lon"], fixes["lat"], "o-", ms=3, lw=1, label=bird)
axes[1].set(title="true tracks of six birds (one year each)", xlabel="longitude", ylabel="latitude")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3 · Preprocessing: grid, masks and weekly distributions
#
# `load_or_preprocess` reprojects the raster to an equal-area grid at `species.res_km` (100 km here),
# crops it to the cells with data and turns each week's abundance into a **distribution**: the share of the
# population in each cell, summing to 1. The result (a `BirdFlowData` xarray dataset) is cached as NetCDF
# under `data.root/processed/`, so a second call just reads it.
#
# The **dynamic mask** is the set of cells where S&T says the species is present in a given week. The
# model only keeps birds in those cells: the week-*t* transition is a matrix from week *t*'s cells to
# week *t+1*'s cells and nothing else. This is what keeps BirdFlow affordable — the number of parameters is
# the sum over weeks of (cells in week *t*) × (cells in week *t+1*), not 52 × (all cells)².

# %%
ds, data_path = load_or_preprocess(cfg.species, cfg.data)
print(summary(ds, data_path))
cells_per_week = ds["dynamic_mask"].values.sum(axis=1)
on_masks = int((cells_per_week * np.roll(cells_per_week, -1)).sum())  # week t -> t+1, 52 -> 1 included
print(f"transition entries: {on_masks:,} on the dynamic masks vs "
      f"{ds.sizes['week'] * ds.sizes['cell'] ** 2:,} without them")
print(f"distributions sum to 1: largest deviation {np.abs(ds['distr'].values.sum(axis=1) - 1).max():.1e}")

def on_grid(values, mask):
    """(cell,) values -> (y, x) image; NaN outside ``mask`` (cell,)."""
    image = np.full(ds["static_mask"].shape, np.nan)
    image[ds["cell_row"].values[mask], ds["cell_col"].values[mask]] = values[mask]
    return image


fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
axes[0].plot(ds["week"], cells_per_week, "o-", ms=3)
axes[0].set(title="cells in the dynamic mask", xlabel="S&T week", ylabel="cells")
every_cell = np.ones(ds.sizes["cell"], dtype=bool)
for ax, week in zip(axes[1:], (2, 28), strict=True):
    t = int(np.flatnonzero(ds["week"].values == week)[0])
    ax.imshow(on_grid(np.ones(ds.sizes["cell"]), every_cell), cmap="Greys", vmin=0, vmax=4)
    ax.imshow(on_grid(ds["distr"].values[t], ds["dynamic_mask"].values[t]), cmap="viridis")
    ax.set(title=f"week {week}: distribution on its mask", xticks=[], yticks=[])
plt.tight_layout()
plt.show()

# %% [markdown]
# The left panel shows how the range expands and contracts over the year; the two maps show the winter
# (week 2) and summer (week 28) masks; grey cells belong to the model's grid (the cells with data in some
# week) but lie outside that week's mask. The cell counts, the
# number of parameters, the memory this would need on a GPU, and how many transition entries the masks
# save are printed above.
#
# ## 4 · The objective, and two location losses
#
# Training minimises, over the weekly transitions,
#
# $$\text{loss} = w_\text{obs}\,\text{location} + w_\text{dist}\,\text{distance} - w_\text{ent}\,\text{entropy}.$$
#
# * **location** compares the model's weekly distribution with the S&T one.
#   *L2* (BirdFlowPy's loss) sums the squared differences cell by cell; it does not know which cells are
#   neighbours, so a distribution off by one cell costs as much as one off by a thousand km.
#   *W2* (Wasserstein-2, computed with entropic optimal transport) is the cost of moving the model's birds
#   onto the S&T distribution, so near misses cost little and far ones a lot (notebook 02 shows this).
# * **distance** is the expected flight cost, with a cost per bird of (km / 100)^`dist_pow`; it favours
#   short moves and stops the model from shuffling birds across the range.
# * **entropy** rewards spreading: among chains that match the maps equally well, it prefers the one whose
#   birds from one cell fan out over more destinations, rather than all following one path.
#
# The weights are `loss.obs_weight`, `loss.dist_weight` and `loss.ent_weight`. We fit three models:
#
# * **L2**: the defaults (`loss=l2`). The L2 term is multiplied by κ, the species' effective number of
#   cells per week, so the weights mean the same at every resolution (docs/concepts/loss-weights.md);
#   `loss.l2_norm=plain` gives BirdFlowPy's objective;
# * **W2**: `loss=w2` with its defaults. It uses the Sinkhorn *divergence* (`loss.w2.debiased=true`), which
#   is zero when the two distributions are equal (the plain entropic cost is smallest for a distribution more
#   concentrated than the target, so it would pull the fit towards shrunken ranges), and measures W2 in
#   one-cell moves: moving all of a week's birds by one cell costs 1, so the term is not swamped by the
#   distance term whatever the grid (section 5 prints the size of each weighted term);
# * **L2, ent_weight=0.3**: L2 again with a 10 times larger entropy weight, to see what that weight does.

# %%
MODELS = {
    "L2": ("l2", ["loss=l2"]),
    "W2": ("w2", ["loss=w2"]),
    "L2, ent_weight=0.3": ("l2_ent", ["loss=l2", "loss.ent_weight=0.3"]),
}
configs = {name: compose_train_cfg(folder, *overrides) for name, (folder, overrides) in MODELS.items()}
for name, c in configs.items():
    print(f"{name:>20}: location={c.loss.location}  obs_weight={c.loss.obs_weight}  "
          f"dist_weight={c.loss.dist_weight}  ent_weight={c.loss.ent_weight}  dist_pow={c.loss.dist_pow}")
print("W2 settings:", OmegaConf.to_container(configs["W2"].loss.w2))

# %% [markdown]
# ## 5 · Training
#
# `train(cfg)` does what `python -m birdflow.train …` does: it preprocesses (here: reads the cache), fits
# the chain with Adam for `optim.steps` steps and writes a **run folder** with the config, the model
# (`model.nc`), its data (`data.nc`), the loss history and checkpoints; a killed run continues with
# `resume=<run dir>`. It returns the run folder, the fitted model and the loss history.

# %%
results = {}
for name, c in configs.items():
    t0 = time.perf_counter()
    results[name] = train(c)
    print(f"{name}: {STEPS} steps in {time.perf_counter() - t0:.1f} s (including compilation)")
print("files in the W2 run folder:", sorted(p.name for p in results["W2"].run_dir.iterdir()))

rows = {}
for name, res in results.items():
    h, w = res.history, configs[name].loss
    kappa = res.model.hyperparameters.get("l2_scale", 1.0)  # L2: effective cells per week; W2: 1
    for step in (0, -1):
        rows[(name, "first" if step == 0 else "last")] = {
            "obs_weight * location": w.obs_weight * kappa * h["obs"][step],
            "dist_weight * distance": w.dist_weight * h["dist"][step],
            "-ent_weight * entropy": -w.ent_weight * h["ent"][step],
            "total": h["total"][step]}
print()
print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.4g}"))
print(f"\nW2 at the first step, in one-cell moves summed over weeks: {results['W2'].history['w2'][0]:.4g} "
      f"(x loss.w2.scale = {configs['W2'].loss.w2.scale} = the location term)")

# %% [markdown]
# The table splits the loss into its weighted terms at the first and the last step; they add up to the total
# (for L2 the location term is `obs_weight · κ · L2`).
# It shows how strongly each term pulls; `loss.w2.scale` (default 1) strengthens or weakens the W2 term.
#
# The loss curves (`plot_loss`, also `loss_curve.png` in a run folder) show each term on a log scale;
# the entropy enters the loss with a minus sign, so it is drawn as `-ent` when it is negative throughout.
# Where a curve flattens, more steps would change little.

# %%
for name in ("L2", "W2"):
    png = RUNS / f"loss_{MODELS[name][0]}.png"
    plot_loss(results[name].history, png, dpi=70)
    print(f"{name} loss terms")
    display(Image(filename=str(png)))

# %% [markdown]
# ## 6 · Evaluation
#
# `evaluate_run(run_dir)` (CLI: `python -m birdflow.evaluate run=<run dir>`) writes `metrics.json` into the
# run folder and returns its content. It finds the tracks and, for the synthetic species, the true chain
# through the run's `run.json`. The summary metrics below, in three groups:
#
# * **fit to the S&T maps**, averaged over the 52 weeks: `mean_tv` (total variation: the share of the
#   population that is in the wrong cells; 0 is perfect), `mean_w2` (roughly how far, in km, the model's birds
#   would have to move to match S&T), `mean_distr_cor` (correlation of the two maps over the week's mask;
#   1 is perfect);
# * **movement, scored on the tracks**: for each pair of consecutive fixes of a bird, the model forecasts
#   where the bird will be at the second fix. `mean_ll` is the mean log-probability it gives the cell the
#   bird was actually in (higher is better); `mean_null_ll` is the same for a null model that ignores the first
#   fix and just uses the S&T map of the second week; `mean_ll_gain` is the difference (positive: the model
#   knows more than the map); `mean_win_prob` is the chance that a location drawn from the model's forecast
#   is closer to the bird's true position than one drawn from the S&T map (0.5: no better);
# * **truth** (synthetic species only): `truth_transition_tv`, the population-weighted total variation between
#   the fitted and the true weekly transitions (0 = the true chain).
#
# The last column evaluates the true chain itself (with `evaluate_model`, which does not write a file):
# what a perfect model scores on these tracks.

# %%
metrics = {name: evaluate_run(res.run_dir)["summary"] for name, res in results.items()}
truth_model = load_model(files.truth)
metrics["true chain"] = evaluate_model(truth_model, files.tracks, truth_model)["summary"]
SHOW = ["mean_tv", "mean_w2", "mean_distr_cor", "mean_ll", "mean_null_ll", "mean_ll_gain",
        "mean_win_prob", "truth_transition_tv", "n_intervals"]
table = pd.DataFrame({name: {k: m[k] for k in SHOW} for name, m in metrics.items()})
print(table.to_string(float_format=lambda v: f"{v:.4g}"))
print("\nwritten:", ", ".join(str(res.run_dir / "metrics.json") for res in results.values()))

HIGHER_IS_BETTER = {"mean_distr_cor", "mean_ll", "mean_ll_gain", "mean_win_prob"}
print("\nL2 vs W2, the better per metric:")
for k in ("mean_tv", "mean_w2", "mean_distr_cor", "mean_ll", "mean_ll_gain", "mean_win_prob",
          "truth_transition_tv"):
    w2_wins = (metrics["W2"][k] > metrics["L2"][k]) == (k in HIGHER_IS_BETTER)
    print(f"  {k:<20} {'W2' if w2_wins else 'L2'}")
for name in results:
    print(f"{name:>20}: mean_ll_gain {metrics[name]['mean_ll_gain']:+.3f}, "
          f"mean_ll {metrics[name]['mean_ll']:.3f} (true chain {metrics['true chain']['mean_ll']:.3f})")

# %% [markdown]
# How to read it: the map-fit rows say whether a model reproduces S&T, which every location loss is built to
# do; the track rows say whether it moves birds the right way, which the maps alone do not determine. The
# lines under the table compare L2 and W2 metric by metric, and give each model's log-likelihood gain over the
# S&T-only null model: a negative gain means its forecasts of where a tracked bird goes next are worse than
# just using the next week's map. Compare the two L2 columns: only the entropy weight differs, and the printed
# metrics show how much it moves the track scores and `truth_transition_tv` compared with the map-fit scores.
# This is why BirdFlow's weights are chosen on tracking data
# (`python -m birdflow.train -m experiment=birdflow_grid` runs BirdFlowPipeline's tuning grid).
#
# ## 7 · Model vs S&T maps
#
# `plot_distributions(model, weeks, path)` draws the model's distribution (top row) over the S&T one
# (bottom row) for a few weeks, on a basemap. The CLI `python -m birdflow.maps run=<run dir>` writes this
# figure, the routes map, a yearly animation and the loss curve into `<run dir>/figures/`.

# %%
WEEKS = [2, 15, 28, 41]  # mid-January, mid-April, mid-July, mid-October
for name in ("L2", "W2"):
    png = RUNS / f"distributions_{MODELS[name][0]}.png"
    plot_distributions(results[name].model, WEEKS, png, dpi=60)
    print(f"{name} model vs S&T")
    display(Image(filename=str(png)))

# %% [markdown]
# ## 8 · Routes
#
# `sample_routes(model, n, start_week, n_weeks)` follows `n` simulated birds through the fitted chain: each
# starts in a cell drawn from the model's distribution of the start week and moves by the weekly transitions.
# `route_stats` measures them: distance flown, stopovers (stays of two weeks or more between the start and
# the end), departure and arrival weeks. Below: spring migration, 20 birds from week 8 (late February) for
# 16 weeks, from each model and from the true chain. CLI: `python -m birdflow.routes run=<run dir> n=20
# start_week=8 weeks=16` writes `routes.csv`, `routes.geojson` and `route_stats.csv`.

# %%
route_models = {**{name: res.model for name, res in results.items()}, "true chain": truth_model}
routes, route_summary = {}, {}
for name, model in route_models.items():
    routes[name] = sample_routes(model, n=20, start_week=8, n_weeks=16, seed=1)
    per_route, route_summary[name] = route_stats(routes[name])
print(routes["W2"].head(3).to_string(index=False))
print()
print(pd.DataFrame(route_summary).to_string(float_format=lambda v: f"{v:.4g}"))
true_km = route_summary["true chain"]["mean_distance_km"]
for name in results:
    print(f"{name:>20}: mean distance flown = {route_summary[name]['mean_distance_km'] / true_km:.0%} "
          "of the true chain's")

# %% [markdown]
# The first rows show the route table's layout (one row per bird and week). In the summary, compare each
# model's distance flown, stopovers and departure/arrival weeks with the true chain's column: a model that
# matches the maps can still move birds too far, too little or at the wrong time.
#
# `plot_routes` draws routes coloured by date (winter blue, spring green, summer yellow, autumn red); dots mark
# where a bird stayed, larger for longer stays; the dashed line outlines the model's grid.

# %%
for name in ("W2", "true chain"):
    png = RUNS / f"routes_{name.replace(' ', '_')}.png"
    plot_routes(route_models[name], routes[name], png, dpi=60)
    print(f"routes: {name}")
    display(Image(filename=str(png)))

# %% [markdown]
# ## 9 · Forecasting one bird
#
# `forecast(model, lon, lat, date, k_weeks)` answers "a bird was seen here on this date; where will it be in
# the next weeks?": a distribution over cells for each of the next `k_weeks` weeks (row 0 is the sighting
# itself). We take the W2 model's most populated cell in the week of 1 March, on the wintering range, and
# look 4, 8 and 12 weeks ahead.

# %%
model = results["W2"].model
date = pd.Timestamp("2022-03-01")
t_start = int(np.flatnonzero(model.data["week"].values == date_to_week([date])[0])[0])
start_cell = int(np.argmax(model.distr_at(t_start)))
lon, lat = float(model.data["cell_lon"][start_cell]), float(model.data["cell_lat"][start_cell])
fc = forecast(model, lon, lat, date, k_weeks=12)
print(f"sighting at lon {lon:.2f}, lat {lat:.2f} on {date:%Y-%m-%d} (S&T week {date_to_week([date])[0]}); "
      f"forecast shape {fc.shape}, rows sum to {fc.sum(axis=1).min():.6f}..{fc.sum(axis=1).max():.6f}")
cell_lon, cell_lat = model.data["cell_lon"].values, model.data["cell_lat"].values
fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
for ax, k in zip(axes, (4, 8, 12), strict=True):
    p = fc[k]
    print(f"after {k:2d} weeks: expected latitude {p @ cell_lat:5.1f}°, most likely cell has "
          f"{p.max():.1%} of the probability, {int((p > 0.01).sum())} cells above 1%")
    ax.scatter(cell_lon, cell_lat, c="lightgrey", s=12)
    ax.scatter(cell_lon, cell_lat, c=p, s=300 * np.sqrt(p / p.max()), cmap="viridis")
    ax.plot(lon, lat, "r*", ms=14)
    ax.set(title=f"{k} weeks after {date:%b %d}", xlabel="longitude")
axes[0].set_ylabel("latitude")
plt.tight_layout()
plt.show()

# %% [markdown]
# The red star is the sighting; dot size and colour show the forecast probability per cell (grey: the grid).
# The printed expected latitudes trace the bird's likely progress north in spring, and the spread (cells above
# 1 %) shows how the forecast's uncertainty changes further ahead.
#
# ## Where next
#
# * A real species: `python -m birdflow.train species=amewoo` (needs the S&T rasters: an `EBIRDST_KEY`
#   for download, or `species.raster=<GeoTIFF>`); the files in `conf/species/` list the options.
# * Compare losses and weights in a sweep: `python -m birdflow.train -m experiment=l2_vs_w2`, then
#   `python -m birdflow.sweep summarize outputs/sweeps/<timestamp>`.
# * Export a model for BirdFlowR: add `export.hdf5=true` to the training command.
# * Notebook 02 explains the W2 loss, notebook 01 the implicit differentiation behind its gradients.

# %%
print("this run's models, metrics and figures are under", RUNS)
