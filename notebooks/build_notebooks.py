"""Write notebooks 01-03 from the cell sources below (reproducible: fixed cell ids, no outputs).

    python notebooks/build_notebooks.py                      # committed form: no outputs
    python notebooks/build_notebooks.py --committed-profile quick
        # same cells; the first cell says the committed outputs come from the quick profile
        # (then execute with `python -m dambq.workbook --profile quick` and copy the
        # executed notebooks from runs/quick/notebooks/ over these)

Logic lives in the dambq package (pipeline.run_stage, analysis, plots, workbook);
the notebooks call it and explain what the figures show. Cells tagged
`parameters` are what papermill overrides. Cells whose first line is
`# NBVAL_CHECK_OUTPUT` are deterministic: their expected output is computed here
and stored, and `pytest --nbval-lax` compares it; every other output is unchecked.
"""
from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

HERE = Path(__file__).resolve().parent

PARAMETERS_COMMON = '''\
profile = "smoke"        # smoke | quick | paper | auto ("paper" on CUDA, else "quick")
data_root = None         # CIFAR-10 root; None: $DAMBQ_DATA, else ../shared/data (smoke: synthetic data)
device = "auto"          # auto | cpu | cuda | cuda:1 ...
runs_dir = None          # checkpoints and metrics, shared by notebooks 01-03; None: f"runs/{profile}"
figures_dir = "figures"  # figures (the smoke profile writes to runs/smoke/figures instead)'''

SETUP = '''\
%matplotlib inline
import os
import sys
from pathlib import Path

# Work from the repository root, wherever the kernel started (notebooks/, the root, runs/...).
root = Path.cwd().resolve()
while not (root / "dambq" / "__init__.py").is_file() and root != root.parent:
    root = root.parent
if (root / "dambq" / "__init__.py").is_file():
    os.chdir(root)
    if str(root) not in sys.path:  # dambq importable even when not installed
        sys.path.insert(0, str(root))

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

from dambq import plots
from dambq import workbook as wb
from dambq.pipeline import load_data, run_stage
from dambq.profiles import get_profile

profile = wb.resolve_profile(profile)
prof = get_profile(profile)
runs_dir, fig_dir = wb.output_dirs(profile, runs_dir, figures_dir)
pd.set_option("display.precision", 4)
pd.set_option("display.width", 160)


def keep(fig, name):
    """Save a figure as <fig_dir>/<name>.png (it is shown below the cell as well)."""
    print(f"saved {plots.save(fig, name, fig_dir)}")


print(f"profile {profile}: {prof.note}")
print(f"runs in {runs_dir}/, figures in {fig_dir}/, device {device}")'''

COMMITTED = {
    None: ("**Committed outputs:** none: this notebook is committed unexecuted. Its default parameters run the "
           "`smoke` profile (synthetic data, a few epochs), which is what `pytest --nbval-lax notebooks` executes; "
           "smoke numbers check that everything runs and measure nothing. "
           "`python -m dambq.workbook --profile quick|paper` writes executed copies to `runs/<profile>/notebooks/`."),
}


def committed_note(profile: str | None) -> str:
    if profile in COMMITTED:
        return COMMITTED[profile]
    return (f"**Committed outputs:** from the `{profile}` profile (`python -m dambq.workbook --profile {profile}`); "
            "every table and figure names the profile, data and device it comes from. Rerun with other "
            "parameters (papermill `-p profile paper`, or edit the `parameters` cell).")


FIGURE_RULE = ("Figures are written to `figures/<name>.png`, except under the `smoke` profile, which writes them "
               "to `runs/smoke/figures/` so that tests never overwrite the real ones.")


# ----------------------------------------------------------------------------- 01

def notebook_01(profile: str | None) -> list:
    return [
        ("md", f"""\
# 01 · Weight distributions and the DMBQ code-books

What this notebook shows, on the weights of a trained full-precision ResNet20 (the `float` stage of the
chosen profile: `run_stage` trains it, or reads it back at once if `runs/<profile>/float.pt` exists):

1. the weight distribution **per layer and per output channel** against maximum-likelihood **Laplace**,
   **Gaussian** and **generalized-Gaussian** fits (histograms, log-density view, Q-Q plots);
2. the **shape statistic** mean|w| / rms(w) of every channel: what DMBQ's lookup uses to pick a code
   (Laplace 0.707, Gaussian 0.798, uniform 0.866);
3. the **levels** of the three weight code-books per bit-width drawn over the histogram: the paper's
   distribution-aware lookup, V2's fixed Laplace table, and uniform levels with an MSE-optimal clip;
4. the **quantization-error table** (MSE / mean(w²), b = 1..4) of every method on the trained weights and
   on Laplace and Gaussian samples, as a figure and a table;
5. an interactive section (sliders for bits and the shape β) that redraws the levels and their error.

{committed_note(profile)}

{FIGURE_RULE}"""),
        ("params", PARAMETERS_COMMON + '''
error_groups_per_layer = None  # weight groups per layer in the error table; None: all (smoke: 4, to stay fast)
channel_layer = None           # layer whose channels are drawn one by one; None: the middle one'''),
        ("code", SETUP + '''

from dambq.analysis import error_table, sample_groups
from dambq.codebook import build_codebook, gennorm_quantile_points, shape_stat_of_beta'''),
        ("md", "## The trained float model"),
        ("code", '''\
data = load_data(prof, data_root)
float_run = run_stage("float", prof, runs_dir, data=data, device=device, progress=False,
                      on_epoch_end=wb.print_epoch)
print(wb.describe(float_run))
model = float_run["model"].cpu().eval()
layers = plots.layer_weights(model)  # the layers DMBQ quantizes: first conv and last linear stay 8-bit
tag = f"ResNet20 float, {profile} profile, {float_run['data']} data"
print(f"{len(layers)} quantized layers, {sum(w.numel() for w in layers.values())} weights")'''),
        ("md", """\
## Which law do the weights follow?

V2 tunes its single code-book for a **Laplace** prior (excess kurtosis 3). The table fits three laws to each
layer by maximum likelihood: the generalized Gaussian of shape β contains both (β = 1 Laplace, β = 2 Gaussian).
Lower negative log-likelihood (`nll_*`) is the better fit."""),
        ("code", '''\
fits = plots.law_fit_table(layers)
pooled = plots.pooled_unit_weights(layers)  # every channel scaled to mean|w| = 1, then pooled
print(f"pooled (per-channel units): excess kurtosis {float(pd.Series(pooled).kurt()):.2f} "
      f"(Laplace 3, Gaussian 0); best law per layer: {fits['best_law'].value_counts().to_dict()}")
fits'''),
        ("code", '''\
fig = plots.weight_histograms_with_fits(layers, title=f"Weights per layer vs fitted laws ({tag})")
keep(fig, "01_weight_histograms")'''),
        ("md", "The same on a log density scale, where the tails (which set the clip) show the difference between the laws:"),
        ("code", '''\
fig = plots.weight_histograms_with_fits(layers, logy=True, title=f"Weights per layer, log density ({tag})")
keep(fig, "01_weight_histograms_log")'''),
        ("md", """\
### Per output channel

DMBQ quantizes each output channel with its own code and clip, so the distribution that matters is the
channel's: a few hundred weights (3×3×C_in)."""),
        ("code", '''\
name = channel_layer or list(layers)[len(layers) // 2]
fig = plots.channel_histograms_with_fits(layers[name], channels=8, layer=name,
                                         title=f"Channels 0-7 of {name} vs fitted laws ({tag})")
keep(fig, "01_channel_histograms")'''),
        ("md", "### Q-Q view\n\nSample quantiles against each fitted law's: points on the diagonal mean the law fits, "
               "an S shape means the tails are lighter or heavier than the law's."),
        ("code", '''\
names = list(layers)
qq_samples = {"all layers (per-channel units)": pooled, names[0]: layers[names[0]],
              names[len(names) // 2]: layers[names[len(names) // 2]], names[-1]: layers[names[-1]]}
fig = plots.qq_plot(qq_samples, title=f"Q-Q plots against fitted laws ({tag})")
keep(fig, "01_qq")'''),
        ("md", """\
## The shape statistic per channel

Each channel's code-book entry is picked by mean|w| / rms(w), a scale-free statistic that grows with the
shape β. Reference values for the named laws (deterministic, checked by nbval):"""),
        ("code", '''\
# NBVAL_CHECK_OUTPUT
from dambq.codebook import shape_stat_of_beta

for law, beta in (("Laplace", 1.0), ("Gaussian", 2.0), ("gen. Gaussian", 4.0)):
    print(f"{law:14s} beta={beta:g}: mean|w|/rms(w) = {float(shape_stat_of_beta(beta)):.4f}")'''),
        ("code", '''\
fig = plots.shape_statistic_per_channel(layers, title=f"Per-channel shape statistic ({tag}); right: shape β")
keep(fig, "01_shape_statistic")'''),
        ("md", "Which entries of the lookup code-book (one per β on its grid) the channels pick:"),
        ("code", '''\
book = build_codebook("lookup")
stat = torch.cat([w.abs().mean(1) / w.pow(2).mean(1).sqrt() for w in layers.values()])
picked = pd.Series([book.betas[i] for i in book.pick(stat).tolist()], name="channels")
picked.value_counts().sort_index().rename_axis("lookup entry β").to_frame().T'''),
        ("md", """\
## Code-book levels over the histogram

All channels pooled in per-channel units (mean|w| = 1). Top: the histogram with the lookup code's levels;
below: the levels of each code-book and of the Lloyd-Max quantizer (the best any 2^b levels can do),
with the relative error MSE / E[w²] each gives on these weights."""),
        ("code", '''\
fig = plots.levels_over_histogram(pooled, bits=(1, 2, 3, 4),
                                  title=f"Code-book levels over the pooled weights ({tag})")
keep(fig, "01_levels")'''),
        ("md", """\
## Quantization error of every method

MSE / mean(w²) over all weight groups (one per output channel), b = 1..4 (`dambq.analysis.error_table`):
`lookup` = DMBQ as in the paper, `laplace` = V2's fixed table, `uniform` = uniform levels with an MSE-optimal
clip, `pooled` = the best single multi-bit binary code for all channels, `per_group` = a multi-bit code fitted
to every channel (what LQ-Nets/ALQ-style methods redo at every step), `lloyd_max` = unconstrained levels: the
bound (dashed)."""),
        ("code", '''\
import time

n = error_groups_per_layer or (4 if profile == "smoke" else None)
trained = [w[:n] for w in layers.values()] if n else list(layers.values())
source = f"ResNet20 trained ({profile}" + (f", {n} channels/layer)" if n else ")")
started = time.perf_counter()
tables = {"Laplace samples": error_table(sample_groups("laplace")),
          "Gaussian samples": error_table(sample_groups("gaussian")),
          source: error_table(trained)}
print(f"error tables computed in {time.perf_counter() - started:.1f} s")'''),
        ("code", '''\
fig = plots.error_table_figure(tables, title=f"Weight quantization error, MSE / mean(w²) ({profile} profile)")
keep(fig, "01_error_table")'''),
        ("code", '''\
errors = plots.error_table_frame(tables)
errors.to_csv(runs_dir / "01_error_table.csv")
errors'''),
        ("md", "Each method's error relative to the Lloyd-Max bound on the same data (1.00 = as good as any 2^b levels):"),
        ("code", '''\
(errors / errors.xs("lloyd_max", level="method")).round(3)'''),
        ("md", """\
## Interactive: levels and error for any shape

Move the sliders to redraw the code-book levels for a generalized Gaussian of shape β (β = 1 Laplace,
β = 2 Gaussian) at the chosen bit-width, with each code's relative error. (Needs a live kernel; in a
saved notebook only the default view is stored. The static figures above do not depend on it.)"""),
        ("code", '''\
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
                                              continuous_update=False))'''),
    ]


# ----------------------------------------------------------------------------- 02

def notebook_02(profile: str | None) -> list:
    return [
        ("md", f"""\
# 02 · Global precision: float → W4A4 with DMBQ, against baselines

What this notebook shows: the first two stages of the paper's pipeline on ResNet20 / CIFAR-10 —

1. the **full-precision** model (`float` stage; trained, or read back, or taken from `float_checkpoint`);
2. **W4A4 fine-tuning with DMBQ** from it (`w4a4`: every weight channel at 4 bits with the distribution-aware
   lookup code-book, activations 4-bit uniform; first conv and last linear at 8 bits);
3. the **uniform baseline** at the same bits and the same steps (`w4a4_uniform`: uniform weight levels with an
   MSE-optimal clip), and optionally **V2's fixed Laplace table** (`w4a4_laplace`);
4. training curves of every stage, and a results table naming profile, data and device on every row.

Every stage writes `runs/<profile>/<stage>.pt/.csv/.json`; notebook 03 starts from `w4a4.pt`.

{committed_note(profile)}

{FIGURE_RULE}"""),
        ("params", PARAMETERS_COMMON + '''
float_checkpoint = None  # a dambq float checkpoint (.pt written by run_stage/fit) to use instead of training
act_clip_init = "mse"    # W4A4 activation clips start at: "mse" (each layer calibrated) or a number (spec: 3.0)
with_laplace = False     # also fine-tune with V2's fixed Laplace table (stage w4a4_laplace, the w4a4 schedule again)
with_distill = False     # also W4A4 with distillation from the float model (stage w4a4_kd; an extension)'''),
        ("code", SETUP),
        ("md", "## Stages\n\nEach `run_stage` call trains the stage, resumes it if it was killed, or reads a "
               "finished one back at once."),
        ("code", '''\
prof = get_profile(profile, act_clip_init=act_clip_init)
data = load_data(prof, data_root)
if float_checkpoint:
    print(f"using {wb.adopt_checkpoint(float_checkpoint, runs_dir)} (from {float_checkpoint})")
stages = (["float", "w4a4", "w4a4_uniform"] + (["w4a4_laplace"] if with_laplace else [])
          + (["w4a4_kd"] if with_distill else []))
runs = {}
for stage in stages:
    runs[stage] = run_stage(stage, prof, runs_dir, data=data, device=device, progress=False,
                            on_epoch_end=wb.print_epoch)
    print(wb.describe(runs[stage]))'''),
        ("md", "## Training curves"),
        ("code", '''\
where = f"{profile} profile, {runs['float']['data']} data"
fig = plots.training_curves({"float": runs_dir / "float.csv"}, title=f"Full-precision ResNet20 ({where})")
keep(fig, "02_float_training")'''),
        ("code", '''\
quantized = {stage: runs_dir / f"{stage}.csv" for stage in stages if stage != "float"}
fig = plots.training_curves(quantized, title=f"W4A4 fine-tuning from the float model: DMBQ vs baselines ({where})")
keep(fig, "02_w4a4_training")'''),
        ("md", """\
## Where the activation clips start

Each 4-bit activation quantizer has one learnable clip (its largest level). The spec starts every clip at 3.0;
by default `dambq` starts each at the MSE-optimal clip of that layer's own input on 1000 training images
(`act_clip_init="mse"`, `dambq.calibrate_act_clips`). Below: the float model converted to W4A4 *before any
quantized training* with each start, and where W4A4 training took the clips (`benchmarks/clip_init.py` does
the same at 2, 3 and 4 bits)."""),
        ("code", '''\
from dambq.convert import act_clips
from dambq.pipeline import compare_clip_starts
from dambq.train import resolve_device

starts = compare_clip_starts(runs["float"]["model"], data, resolve_device(device), bits=4)
trained = f"after W4A4 training (started: {prof.act_clip_init})"
clips = {f"start {r['start']}": r["clips"] for r in starts} | {trained: act_clips(runs["w4a4"]["model"])}
accuracy = {f"start {r['start']}": r["top1"] for r in starts} | {trained: runs["w4a4"]["top1"]}
fig = plots.activation_clips(clips, accuracy, title=f"W4A4 activation clips per layer ({where})")
keep(fig, "02_activation_clips")
display(Markdown("\\n".join(f"- converted, clips at **{r['start']}**, no training: top-1 **{r['top1']:.2f}%**"
                            for r in starts)))'''),
        ("md", "## Results\n\nTop-1 on the test set after the last epoch; `weight_avg`/`act_avg` are size-weighted "
               "averages over the quantized layers (first and last layer excluded, as in the paper)."),
        ("code", '''\
results = pd.DataFrame([wb.summary_row(runs[s]) for s in stages]).set_index("stage")
results.to_csv(runs_dir / "02_results.csv")
results'''),
        ("code", '''\
float_top1 = runs["float"]["top1"]
lines = [f"- **{s}**: top-1 {runs[s]['top1']:.2f}% ({runs[s]['top1'] - float_top1:+.2f} vs float)"
         for s in stages if s != "float"]
gap = runs["w4a4"]["top1"] - runs["w4a4_uniform"]["top1"]
lines.append(f"- DMBQ minus uniform at W4A4: **{gap:+.2f}** points")
lines.append(f"- profile `{profile}` ({prof.note}); data {runs['float']['data']}; device {runs['float']['device']}")
display(Markdown("\\n".join(lines)))'''),
    ]


# ----------------------------------------------------------------------------- 03

def notebook_03(profile: str | None) -> list:
    return [
        ("md", f"""\
# 03 · Channel-wise bit allocation (LBA) from W4A4

What this notebook shows: loss-guided bit-width allocation (`lba` stage) starting from the W4A4 DMBQ model of
notebook 02, lowering single channels' bit-widths until the size-weighted averages meet the targets
(default **W2.0A2.0**, the paper's headline setting); weights may reach 0 bits (the channel is pruned).

1. average weight and activation bits per epoch and how many groups each epoch lowered;
2. the per-layer × per-channel bit-widths as a heatmap, and how they evolved over the epochs;
3. which channels were pruned;
4. final accuracy vs bits, against **uniform allocation** (`w2a2_fixed`: every channel at W2A2, same steps),
   with the paper's numbers for reference;
5. the per-layer bit report (`dambq.bit_report`) as a table;
6. sliders to set other targets and rerun (live kernel only).

The targets come from the `parameters` cell (papermill/nbval use those). Targets other than W2.0A2.0 run in
their own folder `runs/<profile>/lba-W<w>A<a>/`, so results for different targets never mix.

{committed_note(profile)}

{FIGURE_RULE}"""),
        ("params", PARAMETERS_COMMON + '''
weight_target = 2.0      # LBA target: size-weighted average weight bits
act_target = 2.0         # LBA target: size-weighted average activation bits'''),
        ("code", SETUP + '''

import json

from dambq import bit_report'''),
        ("md", "## Parents: the float and W4A4 models (read back from notebook 02's runs, or trained now)"),
        ("code", '''\
data = load_data(prof, data_root)
runs = {}
for stage in ("float", "w4a4"):
    runs[stage] = run_stage(stage, prof, runs_dir, data=data, device=device, progress=False,
                            on_epoch_end=wb.print_epoch)
    print(wb.describe(runs[stage]))'''),
        ("md", "## Loss-guided allocation to the targets, and uniform allocation at W2A2"),
        ("code", '''\
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
where = f"{profile} profile, {runs['lba']['data']} data"'''),
        ("md", "## Average bits per epoch\n\nThe allocator lowers bits only inside its window (shaded) and lands on "
               "the target (never above it)."),
        ("code", '''\
fig = plots.allocation_averages(history, targets=(weight_target, act_target), window=prof.lba_window,
                                title=f"LBA to {wb.target_label(weight_target, act_target)}: averages per epoch ({where})")
keep(fig, "03_allocation_averages")'''),
        ("md", "## Where the bits went\n\nOne row per quantized layer, one column per channel (weights: output "
               "channels; activations: input channels), one panel per epoch. Red = 0 bits (pruned); light grey = "
               "no such channel in that layer."),
        ("code", '''\
fig = plots.bits_heatmap(history, kind="weight", title=f"Weight bits per layer and output channel over epochs ({where})")
keep(fig, "03_weight_bits")'''),
        ("code", '''\
fig = plots.bits_heatmap(history, kind="act", title=f"Activation bits per layer and input channel over epochs ({where})")
keep(fig, "03_act_bits")'''),
        ("md", "## Pruned channels"),
        ("code", '''\
fig = plots.pruned_channels(history, title=f"Channels at 0 bits after LBA to {wb.target_label(weight_target, act_target)} ({where})")
keep(fig, "03_pruned_channels")'''),
        ("md", "## Accuracy vs bits\n\nThis run's stages, with the paper's ResNet20 / CIFAR-10 numbers (300-epoch "
               "schedules per stage) as hollow markers. Short profiles are not a reproduction of those numbers."),
        ("code", '''\
points = [wb.accuracy_point(runs["w4a4"], "W4A4 DMBQ")]
baseline = runs_dir / "w4a4_uniform.json"
if baseline.exists():  # written by notebook 02
    points.append(wb.accuracy_point(json.loads(baseline.read_text()), "W4A4 uniform"))
points += [wb.accuracy_point(runs["lba"], "LBA (channel-wise)"),
           wb.accuracy_point(runs["w2a2_fixed"], "W2A2 uniform allocation")]
fig = plots.accuracy_vs_bits(points, reference=wb.PAPER_RESNET20_CIFAR10, title=f"Top-1 vs average weight bits ({where})")
keep(fig, "03_accuracy_vs_bits")'''),
        ("code", '''\
results = pd.DataFrame([wb.summary_row(runs[s]) for s in ("w4a4", "lba", "w2a2_fixed")]).set_index("stage")
results["targets"] = ["", wb.target_label(weight_target, act_target), ""]
results.to_csv(runs_dir / "03_results.csv")
results'''),
        ("md", "## Bit report of the allocated model\n\nPer layer: groups, mean/min/max bits, pruned groups and "
               "size in bits, for weights and activations (8-bit first/last layers listed, outside the averages)."),
        ("code", '''\
report = bit_report(runs["lba"]["model"])
report'''),
        ("md", """\
## Interactive: other targets

Set the targets with the sliders, then press **Run LBA** (trains the `lba` stage for that pair, or reads it back
if it ran before, and redraws the main figures below). Needs a live kernel; headless runs use the
`parameters` cell."""),
        ("code", '''\
import ipywidgets as widgets

w_slider = widgets.FloatSlider(value=weight_target, min=0.5, max=4.0, step=0.1, description="weight bits")
a_slider = widgets.FloatSlider(value=act_target, min=1.0, max=4.0, step=0.1, description="act bits")
button = widgets.Button(description="Run LBA", button_style="primary", icon="play")
output = widgets.Output()


def on_run(_):
    with output:
        output.clear_output()
        wt, at = round(w_slider.value, 2), round(a_slider.value, 2)
        summary = allocate(wt, at)
        hist = summary["allocation"]
        for fig in (plots.allocation_averages(hist, targets=(wt, at), window=prof.lba_window,
                                              title=f"LBA to {wb.target_label(wt, at)} ({where})"),
                    plots.bits_heatmap(hist, kind="weight", title=f"Weight bits, {wb.target_label(wt, at)} ({where})"),
                    plots.accuracy_vs_bits(points + [wb.accuracy_point(summary, f"LBA {wb.target_label(wt, at)}")],
                                           reference=wb.PAPER_RESNET20_CIFAR10, title=f"Top-1 vs bits ({where})")):
            display(fig)
            plt.close(fig)


button.on_click(on_run)
display(widgets.VBox([widgets.HBox([w_slider, a_slider, button]), output]))'''),
    ]


# ----------------------------------------------------------------------------- writing

NOTEBOOKS = {"01_distribution_analysis.ipynb": notebook_01, "02_global_precision.ipynb": notebook_02,
             "03_channelwise_allocation.ipynb": notebook_03}


def checked_output(source: str) -> list:
    """Run a deterministic (# NBVAL_CHECK_OUTPUT) cell here and return its stdout as the stored output."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(source, "<cell>", "exec"), {})
    return [new_output("stream", name="stdout", text=buffer.getvalue())]


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                   "language_info": {"name": "python"}}
    stem = name.split("_")[0]
    for i, (kind, source) in enumerate(cells):
        if kind == "md":
            cell = new_markdown_cell(source)
        else:
            cell = new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            if source.startswith("# NBVAL_CHECK_OUTPUT"):
                cell.outputs = checked_output(source)
                cell.execution_count = 1  # nbval only compares cells that carry an execution count
        cell.id = f"nb{stem}-cell{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--committed-profile", default=None,
                        help="profile the committed outputs come from (default: none, committed unexecuted)")
    parser.add_argument("--out", default=str(HERE), help="folder to write the notebooks to")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in NOTEBOOKS.items():
        nbformat.write(build(name, make(args.committed_profile)), out / name)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
