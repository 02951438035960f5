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
# # 04 · A deployable model: packed bit-planes and the bit-plane forward
#
# DAMBQ's weights are sums of binary planes, `clip * sum_i a_i s_i` with `s_i = ±1`, so a model can be stored
# in b bits per weight and run as b binary products. This notebook packs the LBA model of notebook 03
# (`dambq.save_packed`), loads it back without the original Python class (`dambq.load_packed`) and shows:
#
# 1. the file size against the float state_dict, by part and per layer;
# 2. the sign planes of one output channel;
# 3. that the packed module computes what the fake-quantized model computes;
# 4. the bit-plane forward's speed against the float forward on this machine (plain PyTorch: slower).
#
# **Committed outputs:** from the `quick` profile (`python -m dambq.workbook --profile quick`); rerun it alone with `python -m dambq.workbook --only 04`, or top to bottom after 03.

# %% tags=["parameters"]
profile = "smoke"        # smoke | quick | paper | auto ("paper" on CUDA, else "quick")
data_root = None         # CIFAR-10 root; None: $DAMBQ_DATA, else ../shared/data (smoke: synthetic data)
device = "auto"          # auto | cpu | cuda | cuda:1 ...
runs_dir = None          # checkpoints and metrics, shared by notebooks 01-04; None: f"runs/{profile}"
figures_dir = "figures"  # figures (the smoke profile writes to runs/smoke/figures instead)
stage = "lba"            # the stage whose checkpoint is packed (trained now if it is missing)

# %%
# %matplotlib inline
import io

import pandas as pd
import torch

from dambq import average_bits, load_packed, plots, save_packed
from dambq.export import forward_ms
from dambq import workbook as wb
from dambq.pipeline import load_data, model_from_checkpoint, run_stage

nb = wb.setup(profile, runs_dir, figures_dir, device)  # works from the repository root; says what it set
profile, prof, runs_dir, keep = nb.profile, nb.prof, nb.runs_dir, nb.keep

# %% [markdown]
# ## The model to pack

# %%
checkpoint = runs_dir / f"{stage}.pt"
if not checkpoint.exists():  # notebook 03 writes it; train it here otherwise
    data = load_data(prof, data_root)
    for name in ("float", "w4a4", stage):
        print(wb.describe(run_stage(name, prof, runs_dir, data=data, device=device, progress=False,
                                    on_epoch_end=wb.print_epoch)))
qmodel, state = model_from_checkpoint(checkpoint)
qmodel.eval()
float_model, _ = model_from_checkpoint(runs_dir / "float.pt")
float_model.eval()
where = f"{profile} profile, {state['meta']['arch']}"
w_avg, a_avg = average_bits(qmodel)
print(f"{checkpoint}: {state['epoch'] + 1} epochs, W{w_avg:.2f}A{a_avg:.2f} ({where})")

# %% [markdown]
# ## Sizes

# %%
packed_path = runs_dir / f"{stage}.dambq"
sizes = save_packed(qmodel, packed_path)
buffer = io.BytesIO()
torch.save(float_model.state_dict(), buffer)
sizes_table = pd.Series({**sizes, "float state_dict": len(buffer.getvalue())}, name="bytes").to_frame()
print(f"{packed_path}: {sizes['file']} bytes, {len(buffer.getvalue()) / sizes['file']:.1f}x smaller than the float state_dict")
sizes_table

# %%
packed = load_packed(packed_path)
fig = plots.packed_sizes_per_layer(packed, title=f"Packed bytes per layer against fp32 weights ({where})")
keep(fig, "04_packed_sizes")

# %% [markdown]
# ## The sign planes of one channel
#
# Each quantized output channel keeps as many ±1 planes as its bit-width; the row label is the plane's
# coefficient `a_i * clip` (BatchNorm folded in).

# %%
layer = next(name for name, m in packed.named_modules()
             if type(m).__name__ == "PackedLayer" and not hasattr(m, "int8") and int(m.group_bits.max()) >= 2)
channel = int(torch.argmax(packed.get_submodule(layer).group_bits))
fig = plots.bit_planes(packed, layer, channel, title=f"{layer}, channel {channel}: sign planes ({where})")
keep(fig, "04_bit_planes")

# %% [markdown]
# ## Same function, and the speed

# %%
x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    expected, got = qmodel(x), packed(x)
print(f"largest difference from the fake-quantized model: {float((got - expected).abs().max() / expected.abs().max()):.2e} "
      "(relative to its largest output)")


speed = pd.Series({"float model": forward_ms(float_model, x), "fake-quantized": forward_ms(qmodel, x),
                   "packed, bit-plane forward": forward_ms(packed, x)}, name="ms per batch of 64 (median of 5)")
print("Plain PyTorch runs one dense ±1 convolution per plane: the packed model shows the arithmetic, "
      "it is not a fast kernel.")
speed.to_frame()
