"""Training step as `fit` takes it: channel-wise W4A4 ResNet20 with LBA tracking vs float.

    python benchmarks/step_speed.py [--batch 128 --steps 25 --device cpu]   # fit's defaults here
    python benchmarks/step_speed.py --all                                    # every precision x compile

Each step is `dambq.train.train_step`, the function `fit` calls, with the precision, layout
and compilation `dambq.train.engine_settings` picks for this device and a stage of
`--stage-steps` steps (compilation can depend on the length; the default is the quick profile's
LBA stage on CIFAR-10) (or, with --all, every
combination of bf16 autocast and torch.compile, which is the table those defaults are chosen
from). Each precision x compilation is one phase in which float and quantized alternate step by
step, so machine noise hits both alike (a 10x slower bf16-emulating phase cannot disturb
another); the first steps (compilation) are timed apart. Prints the medians and the
quantized / float ratio and writes results/step-speed.md, naming the CPU or GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import dambq
from dambq.batches import steps_per_epoch
from dambq.models import build_model
from dambq.profiles import get_profile
from dambq.pipeline import device_name
from dambq.train import engine_settings, precision_label, step_function, train_step

WARMUP = 3  # untimed steps per configuration; the first one includes compilation


def quick_lba_steps() -> int:
    """Training steps of the quick profile's LBA stage on CIFAR-10's 50,000 training images."""
    cfg = get_profile("quick").lba
    return cfg.epochs * steps_per_epoch(50_000, cfg.batch_size, drop_last=True)


def make_step(quantized: bool, amp: bool, compile: bool, batch: int, device: torch.device,
              memory_format=torch.channels_last, arch: str = "resnet20", compile_mode: str | None = None,
              tracking: bool = True):
    """A closure that takes one timed training step of a fresh ResNet20 (W4A4, with LBA's
    sensitivity tracking unless `tracking` is False, when `quantized`) on a fixed random batch,
    as `fit` would with these settings."""
    torch.manual_seed(0)
    model = build_model(arch)
    if quantized:
        model = dambq.convert(model)
    model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    allocator = dambq.BitAllocator(model, 2.0, 2.0) if quantized and tracking else None
    step_fn = step_function(model, compile, compile_mode)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_step(step_fn, x, y, optimizer, allocator, amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started
    return step


def failure(error: Exception) -> str:
    """How a benchmark row names a mode that failed: the error's type and first line."""
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {first}"


UNTRACKED = "untracked"
MODELS = {False: "float", True: "W4A4 + tracking", UNTRACKED: "W4A4, no tracking"}


def label(quantized: bool | str, amp: bool, compile: bool) -> str:
    """A row's name; `quantized` is False, True (W4A4 + tracking) or "untracked" (W4A4 without LBA's
    tracking: the W4A4 stage, and LBA's epochs after its window)."""
    return f"{MODELS[quantized]}, {precision_label(amp)}, {'compiled' if compile else 'eager'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layout", choices=["channels_last", "contiguous"], default="channels_last",
                        help="memory format of models and inputs (fit uses channels_last)")
    parser.add_argument("--all", action="store_true",
                        help="every combination of bf16 autocast and compile, not only fit's defaults")
    parser.add_argument("--precision", choices=["both", "fp32", "bf16"], default="both",
                        help="with --all: only these phases (bf16 is emulated, ~10x slower, on AVX2-only CPUs)")
    parser.add_argument("--stage-steps", type=int, default=None,
                        help="length of the stage whose defaults to time (default: the quick profile's LBA stage)")
    parser.add_argument("--arch", default="resnet20", help="network (dambq.models.MODELS)")
    parser.add_argument("--out", default="results/step-speed.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    # fit's defaults differ for float and quantized models (compilation pays for the latter only)
    stage_steps = args.stage_steps or quick_lba_steps()
    fit_combo = {q: (s["amp"], s["compile"]) for q, s in
                 ((q, engine_settings(device, quantized=q, steps=stage_steps)) for q in (False, True))}
    amps = {"both": (False, True), "fp32": (False,), "bf16": (True,)}[args.precision]
    combos = [(a, c) for a in amps for c in (False, True)] if args.all else sorted(set(fit_combo.values()))
    medians, first = {}, {}
    for amp, compile in combos:  # one phase per combination: float and quantized alternate step by step
        steps = {}
        for quantized in (False, True, UNTRACKED):
            key = (quantized, amp, compile)
            steps[key] = make_step(bool(quantized), amp, compile, args.batch, device, layout, args.arch,
                                   tracking=quantized is True)
            first[key] = steps[key]()
            print(f"{label(*key)}: first step {first[key]:.1f} s", flush=True)
        times = {key: [] for key in steps}
        for i in range(args.steps + WARMUP - 1):
            for key, step in steps.items():
                seconds = step()
                if i >= WARMUP - 1:
                    times[key].append(seconds)
        medians.update({key: statistics.median(t) for key, t in times.items()})
        del steps  # free this phase's models before the next
    defaults_timed = (True, *fit_combo[True]) in medians and (False, *fit_combo[False]) in medians
    if defaults_timed:
        ratio = medians[(True, *fit_combo[True])] / medians[(False, *fit_combo[False])]
        untracked = medians[(UNTRACKED, *fit_combo[True])] / medians[(False, *fit_combo[False])]
    command = " ".join(["python benchmarks/step_speed.py", *sys.argv[1:]])
    order = sorted(medians, key=lambda k: (list(MODELS).index(k[0]), k[1], k[2]))
    rows = [f"| {label(*key)}{' (fit default)' if key[1:] == fit_combo[bool(key[0])] else ''} | {1000 * m:.1f} | "
            f"{args.batch / m:.0f} | {first[key]:.1f} |" for key, m in ((k, medians[k]) for k in order)]
    lines = ["# Training step: channel-wise W4A4 with sensitivity tracking vs float", "",
             f"Command: `{command}`", "",
             f"Network: {args.arch}. Device: {device_name(device)}; torch {torch.__version__}; batch {args.batch}; layout {args.layout}; "
             f"median of {args.steps} steps each, float and quantized alternating; `dambq.train.train_step`, as `fit` runs it.", "",
             f"`fit`'s defaults on this device for a stage of {stage_steps} steps (`dambq.train.engine_settings`): "
             + "; ".join(f"{kind} {precision_label(fit_combo[q][0])}, "
                       f"{'compiled' if fit_combo[q][1] else 'eager'}" for kind, q in (("float", False), ("quantized", True)))
             + ".", "",
             "| model, precision, compilation | ms / step | images / s | first step s |", "|---|---|---|---|",
             *rows, ""]
    if defaults_timed:
        lines.append(f"Training step with `fit`'s defaults, quantized / float: **{ratio:.2f}x** (target <= 1.2x, goal "
                     f"1.1x); without tracking (the W4A4 stage, and LBA after its window: `BitAllocator` stops tracking "
                     f"there) {untracked:.2f}x.")
    if args.all:
        lines.append("Quantized / float within each phase: " + "; ".join(
            f"{'bf16' if a else 'fp32'} {'compiled' if c else 'eager'} {medians[(True, a, c)] / medians[(False, a, c)]:.2f}x"
            for a, c in combos) + ".")
        fastest = {q: min((k for k in medians if k[0] is q), key=medians.get) for q in (False, True)}
        lines.append("Fastest here: " + "; ".join(f"{label(*fastest[q])} ({1000 * medians[fastest[q]]:.0f} ms)"
                                                  for q in (False, True))
                     + f". Fastest quantized / fastest float: {medians[fastest[True]] / medians[fastest[False]]:.2f}x.")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
