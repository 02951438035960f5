# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Channel-wise bit allocation (LBA) from W4A4
#
# What this notebook shows: loss-guided bit-width allocation (`lba` stage) starting from the W4A4 DMBQ model of
# notebook 02, lowering single channels' bit-widths until the size-weighted averages meet the targets
# (default **W2.0A2.0**, the paper's headline setting); weights may reach 0 bits (the channel is pruned).
#
# 1. average weight and activation bits per epoch and how many groups each epoch lowered;
# 2. the per-layer × per-channel bit-widths as a heatmap, and how they evolved over the epochs;
# 3. which channels were pruned;
# 4. final accuracy vs bits, against **uniform allocation** (`w2a2_fixed`: every channel at W2A2, same steps),
#    with the paper's numbers for reference;
# 5. the per-layer bit report (`dambq.bit_report`) as a table;
# 6. sliders to set other targets and rerun (live kernel only).
#
# The targets come from the `parameters` cell (papermill/nbval use those). Targets other than W2.0A2.0 run in
# their own folder `runs/<profile>/lba-W<w>A<a>/`, so results for different targets never mix.
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
weight_target = 2.0      # LBA target: size-weighted average weight bits
act_target = 2.0         # LBA target: size-weighted average activation bits
frontier_report = "results/allocation-frontier.md"  # earlier frontier runs, from other parents
reports = ["results/quick-cpu.md", "results/quick-cpu-resnet20.md", "results/quick-cpu-vgg.md"]  # read last, in order

# %%
# %matplotlib inline
import pandas as pd

from dambq import plots
from dambq import workbook as wb
from dambq.pipeline import load_data, run_stage

nb = wb.setup(profile, runs_dir, figures_dir, device)  # works from the repository root; says what it set
profile, prof, runs_dir, keep = nb.profile, nb.prof, nb.runs_dir, nb.keep

import json

from dambq import bit_report

# %% [markdown]
# ## Parents: the float and W4A4 models (read back from notebook 02's runs, or trained now)

# %%
data = load_data(prof, data_root)
runs = {}
for stage in ("float", "w4a4"):
    runs[stage] = run_stage(stage, prof, runs_dir, data=data, device=device, progress=False,
                            on_epoch_end=wb.print_epoch)
    print(wb.describe(runs[stage]))


# %% [markdown]
# ## Loss-guided allocation to the targets, and uniform allocation at W2A2

# %%
def allocate(weight_target, act_target):
    """Run (or read back) LBA for these targets (files named by the target pair)."""
    summary = run_stage("lba", prof, runs_dir, data=data, device=device, weight_target=weight_target,
                        act_target=act_target, progress=False, on_epoch_end=wb.print_epoch)
    print(wb.describe(summary))
    return summary


runs["lba"] = allocate(weight_target, act_target)
runs["w2a2_fixed"] = run_stage("w2a2_fixed", prof, runs_dir, data=data, device=device, progress=False,
                               on_epoch_end=wb.print_epoch)
print(wb.describe(runs["w2a2_fixed"]))
history = runs["lba"]["allocation"]
where = f"{profile} profile, {runs['lba']['data']} data"

# %% [markdown]
# ## Average bits per epoch
#
# The allocator lowers bits only inside its window (shaded) and lands on the target (never above it).

# %%
fig = plots.allocation_averages(history, targets=(weight_target, act_target), window=prof.lba_window,
                                title=f"LBA to {wb.target_label(weight_target, act_target)}: averages per epoch ({where})")
keep(fig, "03_allocation_averages")

# %% [markdown]
# ## Where the bits went
#
# One row per quantized layer, one column per channel (weights: output channels; activations: input channels), one panel per epoch. Red = 0 bits (pruned); light grey = no such channel in that layer.

# %%
fig = plots.bits_heatmap(history, kind="weight", title=f"Weight bits per layer and output channel over epochs ({where})")
keep(fig, "03_weight_bits")

# %%
fig = plots.bits_heatmap(history, kind="act", title=f"Activation bits per layer and input channel over epochs ({where})")
keep(fig, "03_act_bits")

# %% [markdown]
# ## Pruned channels

# %%
fig = plots.pruned_channels(history, title=f"Channels at 0 bits after LBA to {wb.target_label(weight_target, act_target)} ({where})")
keep(fig, "03_pruned_channels")

# %% [markdown]
# ## Accuracy vs bits
#
# This run's stages, with the paper's ResNet20 / CIFAR-10 numbers (300-epoch schedules per stage) as hollow markers. Short profiles are not a reproduction of those numbers.

# %%
points = [wb.accuracy_point(runs["w4a4"], "W4A4 DMBQ")]
baseline = runs_dir / "w4a4_uniform.json"
if baseline.exists():  # written by notebook 02
    points.append(wb.accuracy_point(json.loads(baseline.read_text()), "W4A4 uniform"))
points += [wb.accuracy_point(runs["lba"], "LBA (channel-wise)"),
           wb.accuracy_point(runs["w2a2_fixed"], "W2A2 uniform allocation")]
fig = plots.accuracy_vs_bits(points, reference=wb.PAPER_RESNET20_CIFAR10, title=f"Top-1 vs average weight bits ({where})")
keep(fig, "03_accuracy_vs_bits")

# %%
results = pd.DataFrame([wb.summary_row(runs[s]) for s in ("w4a4", "lba", "w2a2_fixed")]).set_index("stage")
results["targets"] = ["", wb.target_label(weight_target, act_target), ""]
results.to_csv(runs_dir / "03_results.csv")
results

# %% [markdown]
# ## The allocation frontier: LBA against its rivals
#
# `python benchmarks/allocation_frontier.py --profile <profile> --out <this runs folder>` trains, from the same W4A4
# model, LBA, a second-order signal ("fisher"), random allocation and every channel at the target's bits, for
# several targets and seeds. Drawn here: those runs in this runs folder, and the runs that its committed report
# (`frontier_report`) lists from other W4A4 parents, each trained by an earlier session on its own clone (runs
# folders stay out of git). Within one parent every method starts from the same model; the error bars span every
# run, so they hold the parents' noise too. Only runs of this profile's LBA schedule are drawn: a run trained for
# another number of epochs (the quick profile's LBA stage went from 10 to 15 epochs) is left out with a warning,
# since a longer schedule would pass for a better allocation.

# %%
rows = wb.frontier_rows(runs_dir, report=frontier_report, profile=profile)
if len({r["method"] for r in rows}) > 1:
    fig = plots.allocation_frontier(rows, reference=wb.PAPER_RESNET20_CIFAR10,
                                    title=f"Top-1 vs weight bits per allocation method ({where})")
    keep(fig, "03_allocation_frontier")
    print("\n".join(wb.frontier_verdict(rows)))
else:
    print(f"no frontier runs of this profile's LBA schedule ({prof.lba.epochs} epochs) in {runs_dir} or "
          f"{frontier_report} yet: python benchmarks/allocation_frontier.py --profile {profile} --out {runs_dir}")

# %% [markdown]
# ## Every published row
#
# The paper's and the authors' V2 code's numbers, the command that runs each at the paper's scale, and our own
# number where this runs folder, or a folder beside it named `<its name>-*`, holds one for the same network
# (`--arch vgg_small --out runs/quick-vgg` puts VGG-small's beside runs/quick), else where one of the committed
# `reports` (written by `python -m dambq.pipeline --report`) holds one: runs folders stay out of git, so on a fresh
# clone a run made on another machine survives only in its report. Each number is named with its profile and
# folder or report: a short profile is not a reproduction.

# %%
wb.published_rows(runs_dir, reports=reports)

# %% [markdown]
# ## Bit report of the allocated model
#
# Per layer: groups, mean/min/max bits, pruned groups and size in bits, for weights and activations (8-bit first/last layers listed, outside the averages).

# %%
report = bit_report(runs["lba"]["model"])
report

# %% [markdown]
# ## Interactive: other targets
#
# Set the targets with the sliders, then press **Run LBA** (trains the `lba` stage for that pair, or reads it back
# if it ran before, and redraws the main figures below). Needs a live kernel; headless runs use the
# `parameters` cell.

# %%
import ipywidgets as widgets

w_slider = widgets.FloatSlider(value=weight_target, min=0.5, max=4.0, step=0.1, description="weight bits")
a_slider = widgets.FloatSlider(value=act_target, min=1.0, max=4.0, step=0.1, description="act bits")


def run_lba(progress):
    wt, at = round(w_slider.value, 2), round(a_slider.value, 2)
    progress.start(f"LBA to {wb.target_label(wt, at)}", prof.lba.epochs)
    summary = run_stage("lba", prof, runs_dir, data=data, device=device, weight_target=wt, act_target=at,
                        progress=False, on_epoch_end=progress.epoch)
    print(wb.describe(summary))
    hist = summary["allocation"]
    wb.show_figures(lambda: [
        plots.allocation_averages(hist, targets=(wt, at), window=prof.lba_window,
                                  title=f"LBA to {wb.target_label(wt, at)} ({where})"),
        plots.bits_heatmap(hist, kind="weight", title=f"Weight bits, {wb.target_label(wt, at)} ({where})"),
        plots.accuracy_vs_bits(points + [wb.accuracy_point(summary, f"LBA {wb.target_label(wt, at)}")],
                               reference=wb.PAPER_RESNET20_CIFAR10, title=f"Top-1 vs bits ({where})")])


wb.RunButton("Run LBA", run_lba, controls=[w_slider, a_slider])
