"""Epoch time of the training engine: float vs channel-wise W4A4 vs W4A4 with allocation.

    python benchmarks/epoch_time.py --device cuda --batch 512 --epochs 3 --compile both --out results/epoch-time-gpu.md
    python benchmarks/epoch_time.py --device cpu --batch 128 --epochs 2 --train-limit 4096 --out runs/epoch-time-cpu.md

The GPU check of the engine issue: one prepared script, a few minutes on one GPU.
Every configuration runs through `dambq.train.fit` itself (data on the device as
uint8, batched crop+flip, channels_last, bf16 autocast for the float model), so the
number is what a notebook or `python -m dambq.pipeline` gets. The first epoch
includes cuDNN autotuning (and compilation with --compile) and is reported apart;
"epoch seconds" is the median of the rest, training only (evaluation not counted).
The paper profile's 900 epochs are estimated from the W4A4 + allocation row.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import dambq
from dambq.data import load_cifar10
from dambq.models import build_model
from dambq.pipeline import device_name
from dambq.profiles import StageConfig
from dambq.train import fit, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_speed import failure  # noqa: E402  (a sibling script: one way to name a failed mode)


def time_epochs(name: str, model: torch.nn.Module, data, cfg: StageConfig, device: torch.device,
                allocate: bool, compile: bool, compile_mode: str | None = None) -> dict:
    """Run `cfg.epochs` epochs of `fit` and summarise their training seconds."""
    allocator = dambq.BitAllocator(model, 3.0, 3.0, window=(0, max(0, cfg.epochs - 1))) if allocate else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history = fit(model, data, cfg, device=device, allocator=allocator, progress=False, compile=compile,
                  compile_mode=compile_mode, stage=name)
    seconds = [r["train_seconds"] for r in history]
    steady = seconds[1:] or seconds
    row = {"name": name, "first": seconds[0], "epoch": statistics.median(steady),
           "images_per_s": statistics.median(r["images_per_s"] for r in history[1:] or history),
           "top1": history[-1]["test_top1"], "precision": history[-1]["precision"],
           "compiled": (compile_mode or "default") if compile else "eager"}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if allocate:
        row["bits"] = "W{:.2f}A{:.2f}".format(*dambq.average_bits(model))
    return row


def write_table(rows: list[dict], args, device: torch.device, data, load_seconds: float) -> str:
    """The results table of the rows so far, written to --out: written after every row, so a
    time limit that stops the benchmark (the GPU lease) keeps the rows it finished."""
    command = " ".join(["python benchmarks/epoch_time.py", *sys.argv[1:]])
    memory = " | peak GiB" if device.type == "cuda" else ""
    lines = [
        "# Epoch time: float vs channel-wise W4A4 vs W4A4 with allocation (ResNet20)", "",
        f"Command: `{command}`", "",
        f"Device: {device_name(device)}; torch {torch.__version__}; Python {platform.python_version()}; "
        f"data: {data.source}, {len(data.train_labels)} training images (loaded in {load_seconds:.1f} s); "
        f"batch {args.batch}; {args.epochs} epochs each.", "",
        "Epoch seconds = median training time of epochs 2.., evaluation excluded; the first epoch "
        "(autotuning, compilation) is listed apart. Top-1 after these few epochs is only a sanity check.", "",
        f"| model | training precision | compilation | first epoch s | epoch s | images / s | "
        f"top-1 after {args.epochs} epochs{memory} |",
        "|---|---|---|---|---|---|---|" + ("---|" if memory else ""),
    ]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['name']} | - | {row['compiled']} | failed: {row['failed'].replace('|', '/')} |"
                         + " - |" * (3 + bool(memory)))
            continue
        name = row["name"] + (f" (ends at {row['bits']})" if "bits" in row else "")
        lines.append(f"| {name} | {row['precision']} | {row['compiled']} | {row['first']:.2f} | {row['epoch']:.2f} | "
                     f"{row['images_per_s']:.0f} | {row['top1']:.2f}"
                     + (f" | {row['peak_gib']:.2f}" if memory else "") + " |")
    lines.append("")
    for i in range(0, len(rows) - len(rows) % 3, 3):  # complete groups only
        group = rows[i:i + 3]
        if any("failed" in row for row in group):
            continue
        lines.append(f"{group[0]['compiled']}: quantized / float epoch time W4A4 {group[1]['epoch'] / group[0]['epoch']:.2f}x, "
                     f"W4A4 + allocation {group[2]['epoch'] / group[0]['epoch']:.2f}x; the paper profile's 900 "
                     f"quantized-or-float epochs (3 x 300) at the W4A4 + allocation speed: about "
                     f"{900 * group[2]['epoch'] / 60:.1f} min of training.")
    lines.append("Target on one H100: <= 0.6 s per quantized epoch at batch 512 with allocation on (goal 0.4 s).")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="per configuration; the first is warm-up")
    parser.add_argument("--data", default=None, help="data root (else DAMBQ_DATA, else ../shared/data)")
    parser.add_argument("--source", default="auto", help="dambq.data.load_cifar10 source (synthetic for a dry run)")
    parser.add_argument("--train-limit", type=int, default=None, help="use a subset (dry runs only)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off",
                        help="torch.compile inside fit: off (eager), on, or both (eager and compiled rows)")
    parser.add_argument("--compile-modes", default="default",
                        help="comma list of torch.compile modes for the compiled rows, e.g. default,reduce-overhead")
    parser.add_argument("--out", default="results/epoch-time.md")
    args = parser.parse_args()
    device = resolve_device(args.device)
    started = time.perf_counter()
    data = load_cifar10(args.data, source=args.source, train_limit=args.train_limit)
    load_seconds = time.perf_counter() - started
    cfg = StageConfig(epochs=args.epochs, lr=0.05, batch_size=args.batch, weight_decay=1e-4, nesterov=False)
    modes = [m if m != "default" else None for m in args.compile_modes.split(",")]
    # compiled rows first: they are fit's CUDA default, the rows a time-limited lease most needs
    variants = ([(True, mode) for mode in modes] if args.compile in ("on", "both") else []) + \
               ([(False, None)] if args.compile in ("off", "both") else [])
    torch.manual_seed(0)
    float_model = build_model("resnet20")
    start = {k: v.clone() for k, v in float_model.state_dict().items()}
    rows = []
    for compile, mode in variants:
        for name, quantized, allocate in (("float", False, False), ("W4A4", True, False),
                                          ("W4A4 + allocation", True, True)):
            model = build_model("resnet20")
            model.load_state_dict(start)
            model = dambq.convert(model, inplace=True) if quantized else model
            try:  # a mode that fails (a capture that syncs, a compiler error) is a row, not the end of the run
                rows.append(time_epochs(name, model, data, cfg, device, allocate, compile, mode))
            except Exception as error:  # noqa: BLE001 - reported in the table and the log
                rows.append({"name": name, "compiled": (mode or "default") if compile else "eager",
                             "failed": failure(error)})
            print(rows[-1], flush=True)
            write_table(rows, args, device, data, load_seconds)
    print(write_table(rows, args, device, data, load_seconds))


if __name__ == "__main__":
    main()
