"""How much does the activation clip's starting value matter? Accuracy right after conversion.

    python benchmarks/clip_init.py --checkpoint runs/quick/float.pt --bits 4,3,2 \
        --trained runs/quick/w4a4.pt runs/quick-clip3/w4a4.pt

Converts a trained float model to W<b>A<b> (DMBQ weights, lookup code-book) and evaluates
it before any quantized training, with every learnable activation clip started at the
spec's 3.0 and at the MSE-optimal clip of its own input (`dambq.calibrate_act_clips` on
1000 training images, what the pipeline does by default). The gap is what the first
epochs of quantized training would otherwise spend on moving clips. `--trained` adds
rows for trained quantized checkpoints (their top-1 and where their clips ended), to
show how far training moves the clips from each start. Writes results/clip-init.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dambq.convert import act_clips, convert
from dambq.data import load_cifar10
from dambq.models import build_model
from dambq.pipeline import clip_start_label, compare_clip_starts, device_name
from dambq.quantizers import UniformAct
from dambq.train import evaluate, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/quick/float.pt")
    parser.add_argument("--data", default=None)
    parser.add_argument("--source", default="auto", help="dambq.data.load_cifar10 source (synthetic for CI)")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--bits", default="4,3,2", help="comma list; weights and activations alike")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trained", nargs="*", default=[], help="trained quantized checkpoints to add")
    parser.add_argument("--out", default="results/clip-init.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    state = load_checkpoint(args.checkpoint)
    arch = state.get("meta", {}).get("arch", "resnet20")
    float_model = build_model(arch)
    float_model.load_state_dict(state["model"])
    data = load_cifar10(args.data, source=args.source, test_limit=args.test_limit)
    float_top1 = evaluate(float_model.to(device), data.test_images, data.test_labels, device)["top1"]
    rows = [row for bits in args.bits.split(",") for row in compare_clip_starts(float_model, data, device, int(bits))]
    rows += [trained_row(path, data, device) for path in args.trained]
    for row in rows:
        print({k: v for k, v in row.items() if k != "clips"}, flush=True)
    trained_command = f" --trained {' '.join(args.trained)}" if args.trained else ""
    text = "\n".join([
        "# Activation clip initialisation: top-1 right after conversion, before any quantized training", "",
        f"Command: `python benchmarks/clip_init.py --checkpoint {args.checkpoint} --bits {args.bits}"
        f"{trained_command}`", "",
        f"Model: {args.checkpoint} ({arch}, {state.get('meta', {}).get('profile', '?')} profile), float top-1 "
        f"{float_top1:.2f}%; data: {data.source}; device: {device_name(device)}. Weights: DMBQ lookup "
        "code-book at the same bits; first conv and last linear at 8 bits.", "",
        "| W/A bits | activation clips start at | top-1 | test loss | clips (min-max) | init seconds |",
        "|---|---|---|---|---|---|",
        *[f"| {r['bits']} | {r['start']} | {r['top1']:.2f} | {r['loss']:.3f} | {min(r['clips'].values()):.2f}-"
          f"{max(r['clips'].values()):.2f} | {r['seconds']:.1f} |" for r in rows], "",
        "Rows without a trained checkpoint are before any quantized training (init seconds: the "
        "calibration); rows marked *trained* are checkpoints after quantized training, with the clips "
        "they ended at (init seconds: 0, nothing is set).",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


def trained_row(path: str, data, device: torch.device) -> dict:
    """A trained quantized checkpoint's top-1 and clips; how its clips started is read
    from the stage summary beside it (runs from before act_clip_init existed started at 3.0)."""
    state = load_checkpoint(path)
    model = convert(build_model(state.get("meta", {}).get("arch", "resnet20")), inplace=True)
    model.load_state_dict(state["model"])
    summary = Path(path).with_suffix(".json")
    started = clip_start_label(json.loads(summary.read_text()).get("act_clip_init", 3.0)) if summary.exists() else "?"
    result = evaluate(model.to(device), data.test_images, data.test_labels, device)
    bits = max(int(m.bits.max()) for m in model.modules() if isinstance(m, UniformAct))
    return {"bits": f"{bits} (trained)",
            "start": f"{started}, then {state.get('epoch', -1) + 1} epochs: `{path}`",
            "top1": result["top1"], "loss": result["loss"], "seconds": 0.0, "clips": act_clips(model)}


if __name__ == "__main__":
    main()
