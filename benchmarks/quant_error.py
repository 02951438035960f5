"""Quantization error MSE/mean(w^2) of every weight quantizer, b = 1..4.

    python benchmarks/quant_error.py --checkpoint runs/quick/float.pt

Data: Laplace and Gaussian samples, and the weights of a trained ResNet20 (the
float stage's checkpoint; any profile). Writes results/quant-error.md and .json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dambq.analysis import conv_weight_groups, error_table, format_table, sample_groups, time_per_step
from dambq.models import build_model
from dambq.train import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/quick/float.pt")
    parser.add_argument("--out", default="results/quant-error")
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint)
    model = build_model(state["meta"].get("arch", "resnet20"))
    model.load_state_dict(state["model"])
    trained = conv_weight_groups(model)
    source = f"ResNet20 trained ({state['meta'].get('profile', '?')} profile, {len(state['metrics'])} epochs)"
    tables = {"Laplace": error_table(sample_groups("laplace")),
              "Gaussian": error_table(sample_groups("gaussian")),
              source: error_table(trained)}
    timing = time_per_step(trained)
    lookup, real = tables[source]["lookup"], tables[source]
    gap = {b: lookup[b] / real["pooled"][b] - 1 for b in lookup}
    text = "\n".join([
        "# Weight quantization error, MSE / mean(w^2)", "",
        f"Command: `python benchmarks/quant_error.py --checkpoint {args.checkpoint}`", "",
        format_table(tables), "",
        "lookup DMBQ vs the pooled best multi-bit binary code on the trained weights: "
        + ", ".join(f"b={b}: {100 * g:+.1f}%" for b, g in gap.items()), "",
        f"Time to quantize all {len(trained)} layers once (4 bits, CPU): lookup DMBQ "
        f"{1000 * timing['lookup']:.1f} ms, per-group fitting (20 ALS iterations) "
        f"{1000 * timing['per_group']:.1f} ms: lookup costs {100 * timing['lookup'] / timing['per_group']:.1f}% of it.",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text + "\n")
    Path(args.out + ".json").write_text(json.dumps({"tables": tables, "timing_s": timing, "lookup_vs_pooled": gap}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
