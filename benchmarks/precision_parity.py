"""Does the fast engine cost accuracy? W4A4 with fit's defaults against fp32 eager, two seeds each.

    python benchmarks/precision_parity.py --profile quick --float runs/quick/float.pt --out runs/parity
    python benchmarks/precision_parity.py --profile smoke --float /tmp/f/float.pt --out /tmp/p   # a dry run

From one float checkpoint, the profile's `w4a4` stage trains once per seed and engine: "defaults"
(`dambq.train.engine_settings` on this device: bf16 autocast, and torch.compile for quantized
models, where the device has fast bf16) and "fp32 eager" (the engine before the paper-scale issue).
Each run has its own folder `<out>/<engine>-s<seed>/` holding a copy of the float stage (a
checkpoint made with other settings is refused, never reused), resumes if killed, and is read
back when finished. Writes results/precision-parity.md: top-1 per run, the mean difference and
the minutes, naming the CPU or GPU. The paper-scale issue's bar: the defaults lose at most 0.2
points on average.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

from dambq.pipeline import device_name, load_data, run_stage
from dambq.profiles import get_profile
from dambq.train import engine_settings, precision_label, resolve_device

ENGINES = {"defaults": {}, "fp32 eager": {"amp": False, "compile": False}}


def folder(out: Path, engine: str, seed: int) -> Path:
    return out / f"{engine.replace(' ', '-')}-s{seed}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--float", required=True, help="the float stage's checkpoint (its .json and .csv beside it)")
    parser.add_argument("--out", default="runs/parity")
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--report", default="results/precision-parity.md")
    args = parser.parse_args(argv)
    profile, device = get_profile(args.profile), resolve_device(args.device)
    source = Path(args.float)
    if not source.exists():
        raise SystemExit(f"no float checkpoint at {source}: run `python -m dambq.pipeline --profile "
                         f"{args.profile} --stages float` first")
    data = load_data(profile, args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        for engine, overrides in ENGINES.items():
            run_dir = folder(Path(args.out), engine, seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            for suffix in (".pt", ".json", ".csv"):
                if not (run_dir / f"float{suffix}").exists() and source.with_suffix(suffix).exists():
                    shutil.copy2(source.with_suffix(suffix), run_dir / f"float{suffix}")
            summary = run_stage("w4a4", profile, run_dir, data=data, device=str(device), seed=seed,
                                progress=False, **overrides)
            rows.append({"engine": engine, "seed": seed, **summary})
            print(f"{engine}, seed {seed}: top-1 {summary['top1']:.2f} ({summary['precision']}, "
                  f"{'compiled' if summary.get('compiled') else 'eager'}, {summary['minutes']:.1f} min)", flush=True)
    by_engine = {e: [r for r in rows if r["engine"] == e] for e in ENGINES}
    means = {e: statistics.mean(r["top1"] for r in rs) for e, rs in by_engine.items()}
    difference = means["defaults"] - means["fp32 eager"]
    settings = engine_settings(device)
    command = " ".join(["python benchmarks/precision_parity.py", *(argv if argv is not None else sys.argv[1:])])
    lines = ["# Accuracy parity: the fast engine's defaults against fp32 eager (W4A4)", "",
             f"Command: `{command}`", "",
             f"Device: {device_name(device)}. Profile `{profile.name}` ({profile.w4a4.epochs} W4A4 epochs from one "
             f"float checkpoint, `{source.name}`), network `{rows[0]['arch']}`, data {rows[0]['data']}. The defaults "
             f"here (`dambq.train.engine_settings`): {precision_label(settings['amp'])}, "
             f"{'compiled' if settings['compile'] else 'eager'} for quantized models.", "",
             "| engine | seed | training precision | compiled | top-1 (%) | best top-1 (%) | minutes |",
             "|---|---|---|---|---|---|---|",
             *[f"| {r['engine']} | {r['seed']} | {r['precision']} | {'yes' if r.get('compiled') else 'no'} | "
               f"{r['top1']:.2f} | {r['best_top1']:.2f} | {r['minutes']:.1f} |" for r in rows], "",
             f"Mean top-1: defaults {means['defaults']:.2f}, fp32 eager {means['fp32 eager']:.2f}; difference "
             f"{difference:+.2f} points over {len(seeds)} seed(s) (bar: no worse than -0.20: "
             f"{'met' if difference >= -0.2 else 'missed'}). Minutes are each stage's own (conversion, "
             "calibration, compilation, training and evaluation)."]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
