"""Where a training step's time goes: operator dispatches, kernel launches and the top kernels.

    python benchmarks/step_profile.py --device cuda --batch 512 --out results/step-profile-gpu.md
    python benchmarks/step_profile.py --device cpu --batch 64 --modes eager --out results/step-profile-cpu.md

Why: on one H200 a W4A4 ResNet20 epoch took 5-7x a float one, eager or compiled
(results/gpu-lease-1.md), while its arithmetic is a few percent more than float's. A step that is
slow but light is bound by launching work, not by doing it. Per configuration this prints,
per training step (`dambq.train.train_step`, as `fit` runs it, bf16 where fit uses it):
  - wall ms (median of the profiled steps, synchronised),
  - operator calls made from Python (top-level aten ops: each is at least one dispatch),
  - device kernels launched and their summed time (CUDA only): kernel ms far under wall ms
    means launch-bound, where fewer operators or CUDA graphs ("reduce-overhead") help,
  - the operators (or kernels) that take the most time.
On a CPU the operator count is the one reading that carries over to a GPU: it is what an
eager GPU step pays a launch for.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_speed import failure, make_step  # noqa: E402  (a sibling script: the same step, timed the same way)

from dambq.pipeline import device_name  # noqa: E402
from dambq.train import engine_settings, precision_label  # noqa: E402

WARMUP = 3  # steps before profiling; the first compiles
CUDA_ONLY = ("reduce-overhead", "cuda-graphs")  # inductor's CUDA graphs; dambq.graphs' of the eager step


def _inside_aten(event) -> bool:
    """Whether an operator was called by another operator (then it is not a dispatch of its own
    from Python or the autograd engine: aten::conv2d's aten::convolution, say)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def profile_steps(step, steps: int, device: torch.device) -> dict:
    """Profile `steps` calls of `step` (a make_step closure) and summarise them per step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        walls = [step() for _ in range(steps)]
    events = prof.events()
    top_level = [e for e in events if e.name.startswith("aten::") and not _inside_aten(e)]
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    by_op: dict[str, float] = collections.defaultdict(float)
    if kernels:
        for e in kernels:
            by_op[e.name[:70]] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    else:
        for e in events:
            if e.name.startswith("aten::"):
                by_op[e.name] += e.self_cpu_time_total
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    kernel_us = sum(by_op.values()) if kernels else None
    return {"wall_ms": 1e3 * statistics.median(walls), "ops": len(top_level) / steps,
            "kernels": len(kernels) / steps if kernels else None,
            "kernel_ms": kernel_us / 1e3 / steps if kernel_us is not None else None,
            "top": [(name, us / 1e3 / steps) for name, us in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per configuration")
    parser.add_argument("--modes", default="eager,default,reduce-overhead",
                        help="comma list: eager, torch.compile modes (reduce-overhead: inductor's CUDA graphs) and "
                             "cuda-graphs (the eager step as CUDA graphs, dambq.graphs); the last two CUDA only")
    parser.add_argument("--out", default="results/step-profile.md")
    parser.add_argument("--json", default=None, help="also write the rows here (the GPU lease reads them to "
                        "pick the paper profile's compile mode)")
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = engine_settings(device)["amp"]
    modes = [m for m in args.modes.split(",") if m and not (m in CUDA_ONLY and device.type != "cuda")]
    if "reduce-overhead" in modes:  # say in the log why CUDA graphs were skipped, if they were
        torch._logging.set_logs(perf_hints=True)
    rows = []
    lines_head = ["# Where a training step's time goes (ResNet20, batch %d)" % args.batch, "",
                  f"Command: `python benchmarks/step_profile.py {' '.join(sys.argv[1:])}`", "",
                  f"Device: {device_name(device)}; torch {torch.__version__}; "
                  f"{precision_label(amp)} (fit's default here); channels_last; "
                  f"{args.steps} profiled steps after {WARMUP} unprofiled ones.", ""]
    for mode in modes:
        for quantized in (False, True):
            row = {"model": "W4A4 + tracking" if quantized else "float", "mode": mode}
            try:  # a mode that fails (a capture that syncs, a compiler error) is a row, not the end of the run
                step = make_step(quantized, amp, mode != "eager", args.batch, device,
                                 compile_mode=None if mode in ("eager", "default") else mode)
                for _ in range(WARMUP):
                    step()
                skips_before = _cudagraph_skips()
                row.update(profile_steps(step, args.steps, device))
                if mode == "reduce-overhead":
                    row["graphs skipped"] = _cudagraph_skips() - skips_before
            except Exception as error:  # noqa: BLE001 - reported in the table and the log
                row["failed"] = failure(error)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            rows.append(row)
            print({k: v for k, v in row.items() if k != "top"}, flush=True)
            write(args.out, lines_head, rows)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(Path(args.out).read_text())


def _cudagraph_skips() -> int:
    """How many compiled graphs inductor has run without CUDA graphs so far (reasons: perf_hints log)."""
    from torch._dynamo.utils import counters
    return int(counters["inductor"].get("cudagraph_skips", 0))


def write(out: str, head: list[str], rows: list[dict]) -> None:
    """The table of the rows so far (rewritten after each, so a time limit keeps them)."""
    lines = head + ["| model | mode | wall ms / step | operator calls / step | kernels / step | kernel ms / step |",
                    "|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['mode']} | failed: {r['failed'].replace('|', '/')} | - | - | - |")
            continue
        kernels = f"{r['kernels']:.0f}" if r["kernels"] is not None else "-"
        kernel_ms = f"{r['kernel_ms']:.2f}" if r["kernel_ms"] is not None else "-"
        mode = r["mode"] + (f" ({r['graphs skipped']} graphs ran without CUDA graphs)" if "graphs skipped" in r else "")
        lines.append(f"| {r['model']} | {mode} | {r['wall_ms']:.2f} | {r['ops']:.0f} | {kernels} | {kernel_ms} |")
    pairs = {(r["mode"], r["model"]): r for r in rows if "failed" not in r}
    lines.append("")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        f, q = pairs.get((mode, "float")), pairs.get((mode, "W4A4 + tracking"))
        if f and q:
            lines.append(f"- {mode}: W4A4 + tracking / float: wall {q['wall_ms'] / f['wall_ms']:.2f}x, "
                         f"operators {q['ops'] / f['ops']:.2f}x"
                         + (f", kernels {q['kernels'] / f['kernels']:.2f}x, kernel time "
                            f"{q['kernel_ms'] / f['kernel_ms']:.2f}x" if f["kernels"] else ""))
    for r in (r for r in rows if "failed" not in r):
        lines += ["", f"Top {'kernels' if r['kernels'] is not None else 'operators (self CPU time)'}, "
                  f"{r['model']}, {r['mode']} (ms per step):", ""]
        lines += [f"- {ms:.2f} `{name}`" for name, ms in r["top"]]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
