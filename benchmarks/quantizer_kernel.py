"""One activation quantizer's forward + backward, eager vs torch.compile, as inductor builds it.

    python benchmarks/quantizer_kernel.py --out results/quantizer-kernel-<cpu>.md

Why: a compiled W4A4 step still costs well over a float one (results/step-speed*.md). This
isolates the activation quantizer (`dambq.quantizers._UniformActQuant`, one ResNet20 first-stage
input, [batch, 16, 32, 32], fp32) and times it with its per-channel level counts n = 2^b - 1 as
`UniformAct.forward` handed them over before `dambq.quantizers.level_counts` (int64, derived
from the integer `bits` buffer inside the graph) and as float32, and the `UniformAct` module
itself (which hands over `level_counts`), in both memory layouts, beside an eager ReLU (a
pass that only reads and writes, the memory-bound reference). Inductor fuses the small per-channel arithmetic into the big
elementwise kernel, so with int64 n every element pays an int64 -> float conversion; the
float rows show what that costs on this machine. The "formulas" rows compare the two backward
forms with LBA tracking on: the in-place one (out= buffers, BLAS dot products: fewest passes in
eager) and the fusible one (plain ops that inductor fuses), which the module uses when compiled.
Phases alternate row by row
each round, so machine noise hits all rows alike; prints medians.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dambq.pipeline import device_name
from dambq.quantizers import UniformAct, _UniformActQuant, _uniform_grads_fusible, _uniform_grads_inplace, _uniform_levels

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


KINDS = ("quant, int64 n", "quant, float n", "UniformAct", "UniformAct + tracking",
         "formulas, in place + tracking", "formulas, fusible + tracking")
FORMS = {"in place": _uniform_grads_inplace, "fusible": _uniform_grads_fusible}


def make_pass(kind: str, compiled: bool, layout: torch.memory_format, batch: int, device: torch.device):
    """A closure timing one forward + backward of `kind` ("relu" or one of KINDS).

    The "formulas" kinds run the forward levels and one of the two backward forms of
    `_UniformActQuant` (`dambq.quantizers._uniform_grads_inplace`, `_uniform_grads_fusible`)
    as plain calls, without autograd, so that both forms can be compiled and timed in one run
    (the module picks the fusible one when compiled, the in-place one in eager)."""
    x = torch.randn(batch, 16, 32, 32, device=device).relu().contiguous(memory_format=layout).requires_grad_(True)
    grad = torch.randn_like(x)
    clip = torch.nn.Parameter(torch.tensor(2.0, device=device))
    n = torch.full((1, 16, 1, 1), 15, dtype=torch.long, device=device)
    if kind == "relu":
        fn = torch.relu
    elif kind.startswith("UniformAct"):  # the module as dambq.convert builds it: its level counts from `bits`
        fn = UniformAct(16, bits=4, init_clip=2.0).to(device)
        if "tracking" in kind:  # as a BitAllocator switches it on
            fn.track, fn.step_sensitivity = "current", torch.zeros(16, device=device)
    elif kind.startswith("formulas"):
        form = FORMS[kind.split(", ")[1].split(" + ")[0]]
        sensitivity, levels, x = torch.zeros(16, device=device), n.float(), x.detach()

        def fn(t):
            y = _uniform_levels(t, clip.detach(), levels)
            return form(t, y, grad, clip.detach(), levels, sensitivity, False, False)
    else:
        levels = n if "int64" in kind else n.float()
        def fn(t):
            return _UniformActQuant.apply(t, clip, levels, None, False)
    if compiled:
        fn = torch.compile(fn)

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        if kind.startswith("formulas"):
            fn(x)
        else:
            fn(x).backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started
    return run


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--out", default=None, help="markdown report")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    # the reference is eager: compiled alone, a ReLU took many times its eager pass on an AVX2 CPU, which
    # says something about a one-op graph on a leaf, not about memory traffic
    configs = [(kind, compiled, layout) for layout in LAYOUTS
               for compiled in ((False,) if args.no_compile else (False, True))
               for kind in (("relu",) if not compiled else ()) + KINDS]
    passes = [make_pass(kind, compiled, LAYOUTS[layout], args.batch, device)
              for kind, compiled, layout in configs]
    for run in passes:  # warm-up; the first call compiles
        for _ in range(3):
            run()
    times = [[] for _ in passes]
    for _ in range(args.rounds):
        for run, kept in zip(passes, times):
            kept.append(run())
    rows = [{"pass": kind, "compiled": compiled, "layout": layout, "ms": 1000 * statistics.median(kept)}
            for (kind, compiled, layout), kept in zip(configs, times)]
    by = {(r["pass"], r["compiled"], r["layout"]): r["ms"] for r in rows}
    lines = [f"# Activation quantizer forward + backward: eager vs compiled, int64 vs float level counts, "
             f"in-place vs fusible backward", "",
             f"Command: `python benchmarks/quantizer_kernel.py --batch {args.batch} --rounds {args.rounds}`", "",
             f"Device: {device_name(device)}; torch {torch.__version__}; input [{args.batch}, 16, 32, 32] fp32; "
             f"median of {args.rounds} rounds, rows alternating.", "",
             "| pass | compiled | layout | ms | / eager ReLU (same layout) |", "|---|---|---|---|---|"]
    for r in rows:
        relu = by[("relu", False, r["layout"])]
        lines.append(f"| {r['pass']} | {'yes' if r['compiled'] else 'no'} | {r['layout']} | {r['ms']:.2f} | "
                     f"{r['ms'] / relu:.2f} |")
    if not args.no_compile:
        lines += [""] + [f"{layout}: compiled / eager, int64 n {by[('quant, int64 n', True, layout)] / by[('quant, int64 n', False, layout)]:.2f}x, "
                         f"float n {by[('quant, float n', True, layout)] / by[('quant, float n', False, layout)]:.2f}x; "
                         f"compiled float n / int64 n {by[('quant, float n', True, layout)] / by[('quant, int64 n', True, layout)]:.2f}x."
                         for layout in LAYOUTS]
        lines += [f"{layout}, compiled, with tracking: fusible / in-place backward "
                  f"{by[('formulas, fusible + tracking', True, layout)] / by[('formulas, in place + tracking', True, layout)]:.2f}x; "
                  f"eager: {by[('formulas, fusible + tracking', False, layout)] / by[('formulas, in place + tracking', False, layout)]:.2f}x."
                  for layout in LAYOUTS]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return rows


if __name__ == "__main__":
    main()
