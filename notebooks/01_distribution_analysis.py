# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Weight distributions and the DMBQ code-books
#
# What this notebook shows, on the weights of a trained full-precision ResNet20 (the `float` stage of the
# chosen profile: `run_stage` trains it, or reads it back at once if `runs/<profile>/float.pt` exists):
#
# 1. the weight distribution **per layer and per output channel** against maximum-likelihood **Laplace**,
#    **Gaussian** and **generalized-Gaussian** fits (histograms, log-density view, Q-Q plots);
# 2. the **shape statistic** mean|w| / rms(w) of every channel: what DMBQ's lookup uses to pick a code
#    (Laplace 0.707, Gaussian 0.798, uniform 0.866);
# 3. the **levels** of the three weight code-books per bit-width drawn over the histogram: the paper's
#    distribution-aware lookup, V2's fixed Laplace table, and uniform levels with an MSE-optimal clip;
# 4. the **quantization-error table** (MSE / mean(w²), b = 1..4) of every method on the trained weights and
#    on Laplace and Gaussian samples, as a figure and a table;
# 5. an interactive section (sliders for bits and the shape β) that redraws the levels and their error.
#
# **Committed outputs:** from the `quick` profile (`python -m dambq.workbook --profile quick`); every table and figure names the profile, data and device it comes from. Rerun with other parameters (papermill `-p profile paper`, or edit the `parameters` cell).
#
# Figures are written to `figures/<name>.png`, except under the `smoke` profile, which writes them to `runs/smoke/figures/` so that tests never overwrite the real ones.

# %% tags=["parameters"]
profile = "smoke"        # smoke | quick | paper | auto ("paper" on CUDA, else "quick")
data_root = None         # CIFAR-10 root; None: $DAMBQ_DATA, else ../shared/data (smoke: synthetic data)
device = "auto"          # auto | cpu | cuda | cuda:1 ...
runs_dir = None          # checkpoints and metrics, shared by notebooks 01-03; None: f"runs/{profile}"
figures_dir = "figures"  # figures (the smoke profile writes to runs/smoke/figures instead)
error_groups_per_layer = None  # weight groups per layer in the error table; None: all (smoke: 4, to stay fast)
channel_layer = None           # layer whose channels are drawn one by one; None: the middle one

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
import torch

from dambq import plots
from dambq import workbook as wb
from dambq.pipeline import load_data, run_stage

nb = wb.setup(profile, runs_dir, figures_dir, device)  # works from the repository root; says what it set
profile, prof, runs_dir, keep = nb.profile, nb.prof, nb.runs_dir, nb.keep

from dambq.analysis import error_table, sample_groups
from dambq.codebook import build_codebook, gennorm_quantile_points, shape_stat_of_beta, shape_statistic

# %% [markdown]
# ## The trained float model

# %%
data = load_data(prof, data_root)
float_run = run_stage("float", prof, runs_dir, data=data, device=device, progress=False,
                      on_epoch_end=wb.print_epoch)
print(wb.describe(float_run))
model = float_run["model"].cpu().eval()
layers = plots.layer_weights(model)  # the layers DMBQ quantizes: first conv and last linear stay 8-bit
tag = f"ResNet20 float, {profile} profile, {float_run['data']} data"
print(f"{len(layers)} quantized layers, {sum(w.numel() for w in layers.values())} weights")

# %% [markdown]
# ## Which law do the weights follow?
#
# V2 tunes its single code-book for a **Laplace** prior (excess kurtosis 3). The table fits three laws to each
# layer by maximum likelihood: the generalized Gaussian of shape β contains both (β = 1 Laplace, β = 2 Gaussian).
# Lower negative log-likelihood (`nll_*`) is the better fit.

# %%
fits = plots.law_fit_table(layers)
pooled = plots.pooled_unit_weights(layers)  # every channel scaled to mean|w| = 1, then pooled
print(f"pooled (per-channel units): excess kurtosis {float(pd.Series(pooled).kurt()):.2f} "
      f"(Laplace 3, Gaussian 0); best law per layer: {fits['best_law'].value_counts().to_dict()}")
fits

# %%
fig = plots.weight_histograms_with_fits(layers, title=f"Weights per layer vs fitted laws ({tag})")
keep(fig, "01_weight_histograms")

# %% [markdown]
# The same on a log density scale, where the tails (which set the clip) show the difference between the laws:

# %%
fig = plots.weight_histograms_with_fits(layers, logy=True, title=f"Weights per layer, log density ({tag})")
keep(fig, "01_weight_histograms_log")

# %% [markdown]
# ### Per output channel
#
# DMBQ quantizes each output channel with its own code and clip, so the distribution that matters is the
# channel's: a few hundred weights (3×3×C_in).

# %%
name = channel_layer or list(layers)[len(layers) // 2]
fig = plots.channel_histograms_with_fits(layers[name], channels=8, layer=name,
                                         title=f"Channels 0-7 of {name} vs fitted laws ({tag})")
keep(fig, "01_channel_histograms")

# %% [markdown]
# ### Q-Q view
#
# Sample quantiles against each fitted law's: points on the diagonal mean the law fits, an S shape means the tails are lighter or heavier than the law's.

# %%
names = list(layers)
qq_samples = {"all layers (per-channel units)": pooled, names[0]: layers[names[0]],
              names[len(names) // 2]: layers[names[len(names) // 2]], names[-1]: layers[names[-1]]}
fig = plots.qq_plot(qq_samples, title=f"Q-Q plots against fitted laws ({tag})")
keep(fig, "01_qq")

# %% [markdown]
# ## The shape statistic per channel
#
# Each channel's code-book entry is picked by mean|w| / rms(w), a scale-free statistic that grows with the
# shape β. Reference values for the named laws (deterministic, checked by nbval):

# %%
# NBVAL_CHECK_OUTPUT
from dambq.codebook import shape_stat_of_beta

for law, beta in (("Laplace", 1.0), ("Gaussian", 2.0), ("gen. Gaussian", 4.0)):
    print(f"{law:14s} beta={beta:g}: mean|w|/rms(w) = {float(shape_stat_of_beta(beta)):.4f}")

# %%
fig = plots.shape_statistic_per_channel(layers, title=f"Per-channel shape statistic ({tag}); right: shape β")
keep(fig, "01_shape_statistic")

# %% [markdown]
# Which entries of the lookup code-book (one per β on its grid) the channels pick:

# %%
book = build_codebook("lookup")
stat = torch.cat([shape_statistic(w)[1] for w in layers.values()])  # mean|w| / rms(w) per channel
picked = pd.Series([book.betas[i] for i in book.pick(stat).tolist()], name="channels")
picked.value_counts().sort_index().rename_axis("lookup entry β").to_frame().T

# %% [markdown]
# ## Code-book levels over the histogram
#
# All channels pooled in per-channel units (mean|w| = 1). Top: the histogram with the lookup code's levels;
# below: the levels of each code-book and of the Lloyd-Max quantizer (the best any 2^b levels can do),
# with the relative error MSE / E[w²] each gives on these weights.

# %%
fig = plots.levels_over_histogram(pooled, bits=(1, 2, 3, 4),
                                  title=f"Code-book levels over the pooled weights ({tag})")
keep(fig, "01_levels")

# %% [markdown]
# ## Quantization error of every method
#
# MSE / mean(w²) over all weight groups (one per output channel), b = 1..4 (`dambq.analysis.error_table`):
# `lookup` = DMBQ as in the paper, `laplace` = V2's fixed table, `uniform` = uniform levels with an MSE-optimal
# clip, `pooled` = the best single multi-bit binary code for all channels, `per_group` = a multi-bit code fitted
# to every channel (what LQ-Nets/ALQ-style methods redo at every step), `lloyd_max` = unconstrained levels: the
# bound (dashed).

# %%
import time

n = error_groups_per_layer or (4 if profile == "smoke" else None)
trained = [w[:n] for w in layers.values()] if n else list(layers.values())
source = f"ResNet20 trained ({profile}" + (f", {n} channels/layer)" if n else ")")
started = time.perf_counter()
tables = {"Laplace samples": error_table(sample_groups("laplace")),
          "Gaussian samples": error_table(sample_groups("gaussian")),
          source: error_table(trained)}
print(f"error tables computed in {time.perf_counter() - started:.1f} s")

# %%
fig = plots.error_table_figure(tables, title=f"Weight quantization error, MSE / mean(w²) ({profile} profile)")
keep(fig, "01_error_table")

# %%
errors = plots.error_table_frame(tables)
errors.to_csv(runs_dir / "01_error_table.csv")
errors

# %% [markdown]
# Each method's error relative to the Lloyd-Max bound on the same data (1.00 = as good as any 2^b levels):

# %%
(errors / errors.xs("lloyd_max", level="method")).round(3)

# %% [markdown]
# ## Interactive: levels and error for any shape
#
# Move the sliders to redraw the code-book levels for a generalized Gaussian of shape β (β = 1 Laplace,
# β = 2 Gaussian) at the chosen bit-width, with each code's relative error. (Needs a live kernel; in a
# saved notebook only the default view is stored. The static figures above do not depend on it.)

# %%
import ipywidgets as widgets


def explore(bits=2, beta=2.0):
    """Levels of each code-book, and their error, for a generalized Gaussian of shape beta."""
    x = gennorm_quantile_points(beta, 20_000)  # equal-probability points: exact, no sampling noise
    entry = book.betas[int(book.pick(torch.tensor(float(shape_stat_of_beta(beta)))))]
    plots.levels_over_histogram(x, bits=bits, xlabel="x / mean|x|",
                                title=f"gen. Gaussian β={beta:.2f}, {bits} bit(s); lookup entry β={entry:g}")
    plt.show()


_ = widgets.interact(explore,
                     bits=widgets.IntSlider(value=2, min=1, max=4, description="bits"),
                     beta=widgets.FloatSlider(value=2.0, min=0.5, max=4.0, step=0.05, description="shape β",
                                              continuous_update=False))
