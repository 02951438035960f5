"""Training step and eval forward: channel-wise W4A4 ResNet20 (with LBA tracking) vs float.

    python benchmarks/step_speed.py [--batch 128 --steps 25 --device cpu]

All models run in the same process, alternating, so machine noise hits both;
prints the median step times and their ratio and writes results/step-speed.md.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import dambq
from dambq.models import build_model
from dambq.convert import is_quantized
from dambq.pipeline import device_name
from dambq.train import fast_bfloat16


def step_timer(model, batch: int, device: torch.device, amp: bool = False,
               memory_format=torch.channels_last):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    allocator = dambq.BitAllocator(model, 2.0, 2.0) if is_quantized(model) else None

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if allocator is not None:
            allocator.accumulate()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started
    return step


def eval_timer(model, batch: int, device: torch.device, memory_format=torch.channels_last):
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)

    @torch.no_grad()
    def step() -> float:
        model.eval()
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model.train()
        return time.perf_counter() - started
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layout", choices=["channels_last", "contiguous"], default="channels_last",
                        help="memory format of models and inputs (dambq.train.fit uses channels_last)")
    parser.add_argument("--out", default="results/step-speed.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    float_model = build_model("resnet20").to(device)
    quant_model = dambq.convert(float_model).to(device, memory_format=layout)
    float_model.to(memory_format=layout)
    steps = {"float": step_timer(float_model, args.batch, device, memory_format=layout),
             "W4A4 + tracking": step_timer(quant_model, args.batch, device, memory_format=layout),
             "float eval": eval_timer(float_model, args.batch, device, memory_format=layout),
             "W4A4 eval": eval_timer(quant_model, args.batch, device, memory_format=layout)}
    if fast_bfloat16(device):  # what dambq.train.fit uses for float models on this device
        bf16_model = build_model("resnet20").to(device, memory_format=layout)
        steps["float, bf16 autocast"] = step_timer(bf16_model, args.batch, device, amp=True, memory_format=layout)
    times = {name: [] for name in steps}
    for i in range(args.steps + 3):  # alternate so that both see the same machine state
        for name, step in steps.items():
            seconds = step()
            if i >= 3:
                times[name].append(seconds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["W4A4 + tracking"] / medians["float"]
    eval_ratio = medians["W4A4 eval"] / medians["float eval"]
    bf16_line = (f"Against the bf16-autocast float step that `fit` uses on this device, the fp32 quantized step is "
                 f"{medians['W4A4 + tracking'] / medians['float, bf16 autocast']:.2f}x (quantized layers stay fp32 "
                 "so their levels are exact)." if "float, bf16 autocast" in medians else "")
    text = "\n".join([
        "# Training step: channel-wise W4A4 ResNet20 with sensitivity tracking vs float", "",
        f"Command: `python benchmarks/step_speed.py --batch {args.batch} --steps {args.steps} --device {args.device} "
        f"--layout {args.layout} --out {args.out}`", "",
        f"Device: {device_name(device)}; batch {args.batch}; layout {args.layout}; median of {args.steps} steps each, alternating.", "",
        "| model, pass | ms / batch | images / s |", "|---|---|---|",
        *[f"| {name} | {1000 * m:.1f} | {args.batch / m:.0f} |" for name, m in medians.items()], "",
        f"Training step, quantized / float: **{ratio:.2f}x** (V2 measured 1.72x on 2 CPU cores; target <= 1.5x).",
        f"Evaluation forward, quantized / float: {eval_ratio:.2f}x.", bf16_line,
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
