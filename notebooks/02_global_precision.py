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
# # 02 · Global precision: float → W4A4 with DMBQ, against baselines
#
# What this notebook shows: the first two stages of the paper's pipeline on ResNet20 / CIFAR-10 —
#
# 1. the **full-precision** model (`float` stage; trained, or read back, or taken from `float_checkpoint`);
# 2. **W4A4 fine-tuning with DMBQ** from it (`w4a4`: every weight channel at 4 bits with the distribution-aware
#    lookup code-book, activations 4-bit uniform; first conv and last linear at 8 bits);
# 3. the **uniform baseline** at the same bits and the same steps (`w4a4_uniform`: uniform weight levels with an
#    MSE-optimal clip), and optionally **V2's fixed Laplace table** (`w4a4_laplace`);
# 4. training curves of every stage, and a results table naming profile, data and device on every row.
#
# Every stage writes `runs/<profile>/<stage>.pt/.csv/.json`; notebook 03 starts from `w4a4.pt`.
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
float_checkpoint = None  # a dambq float checkpoint (.pt written by run_stage/fit) to use instead of training
act_clip_init = "mse"    # W4A4 activation clips start at: "mse" (each layer calibrated) or a number (spec: 3.0)
with_laplace = False     # also fine-tune with V2's fixed Laplace table (stage w4a4_laplace, the w4a4 schedule again)
with_distill = False     # also W4A4 with distillation from the float model (stage w4a4_kd; an extension)

# %%
# %matplotlib inline
import pandas as pd
from IPython.display import Markdown, display

from dambq import plots
from dambq import workbook as wb
from dambq.pipeline import load_data, run_stage
from dambq.profiles import get_profile

nb = wb.setup(profile, runs_dir, figures_dir, device)  # works from the repository root; says what it set
profile, prof, runs_dir, keep = nb.profile, nb.prof, nb.runs_dir, nb.keep

# %% [markdown]
# ## Stages
#
# Each `run_stage` call trains the stage, resumes it if it was killed, or reads a finished one back at once.

# %%
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
    print(wb.describe(runs[stage]))

# %% [markdown]
# ## Training curves

# %%
where = f"{profile} profile, {runs['float']['data']} data"
fig = plots.training_curves({"float": runs_dir / "float.csv"}, title=f"Full-precision ResNet20 ({where})")
keep(fig, "02_float_training")

# %%
quantized = {stage: runs_dir / f"{stage}.csv" for stage in stages if stage != "float"}
fig = plots.training_curves(quantized, title=f"W4A4 fine-tuning from the float model: DMBQ vs baselines ({where})")
keep(fig, "02_w4a4_training")

# %% [markdown]
# ## Where the activation clips start
#
# Each 4-bit activation quantizer has one learnable clip (its largest level). The spec starts every clip at 3.0;
# by default `dambq` starts each at the MSE-optimal clip of that layer's own input on 1000 training images
# (`act_clip_init="mse"`, `dambq.calibrate_act_clips`). Below: the float model converted to W4A4 *before any
# quantized training* with each start, and where W4A4 training took the clips (`benchmarks/clip_init.py` does
# the same at 2, 3 and 4 bits).

# %%
from dambq.convert import act_clips
from dambq.pipeline import compare_clip_starts
from dambq.train import resolve_device

starts = compare_clip_starts(runs["float"]["model"], data, resolve_device(device), bits=4)
trained = f"after W4A4 training (started: {prof.act_clip_init})"
clips = {f"start {r['start']}": r["clips"] for r in starts} | {trained: act_clips(runs["w4a4"]["model"])}
accuracy = {f"start {r['start']}": r["top1"] for r in starts} | {trained: runs["w4a4"]["top1"]}
fig = plots.activation_clips(clips, accuracy, title=f"W4A4 activation clips per layer ({where})")
keep(fig, "02_activation_clips")
display(Markdown("\n".join(f"- converted, clips at **{r['start']}**, no training: top-1 **{r['top1']:.2f}%**"
                            for r in starts)))

# %% [markdown]
# ## Results
#
# Top-1 on the test set after the last epoch; `weight_avg`/`act_avg` are size-weighted averages over the quantized layers (first and last layer excluded, as in the paper).

# %%
results = pd.DataFrame([wb.summary_row(runs[s]) for s in stages]).set_index("stage")
results.to_csv(runs_dir / "02_results.csv")
results

# %%
float_top1 = runs["float"]["top1"]
lines = [f"- **{s}**: top-1 {runs[s]['top1']:.2f}% ({runs[s]['top1'] - float_top1:+.2f} vs float)"
         for s in stages if s != "float"]
gap = runs["w4a4"]["top1"] - runs["w4a4_uniform"]["top1"]
lines.append(f"- DMBQ minus uniform at W4A4: **{gap:+.2f}** points")
lines.append(f"- profile `{profile}` ({prof.note}); data {runs['float']['data']}; device {runs['float']['device']}")
display(Markdown("\n".join(lines)))
