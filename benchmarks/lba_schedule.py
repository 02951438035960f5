"""Which quantized-stage schedule recovers most in a short run? One parent, several (lr, window).

    python benchmarks/lba_schedule.py --parent runs/qp --settings 0.02:0,4 0.02:0,2 0.05:0,4 0.05:0,2 \
        --root runs/lba-schedule --out results/lba-schedule.md
    python benchmarks/lba_schedule.py --stage w4a4 --parent runs/qp --settings 0.01 0.02 \
        --root runs/w4a4-schedule --out results/w4a4-schedule.md
    python benchmarks/lba_schedule.py --stage w4a4 --parent runs/quick --settings 0.01 0.005 0.002 \
        --seeds 0 1 --root runs/w4a4-lr --out results/w4a4-lr.md

Each setting is one stage of the profile (the LBA stage: 10 quick epochs to W2.0A2.0; or the
W4A4 stage) started from the same parent checkpoint (`<parent>/w4a4.pt` for LBA, with the float
it came from; `<parent>/float.pt` for W4A4), run as `python -m dambq.pipeline --stages STAGE
--lr LR [--window FIRST,LAST] [--seed S]` in its own folder under `--root` (`lr0.005`, `lr0.005-s1`
for seed 1), one at a time (never two trainings on 2 cores). A finished folder is read back, not rerun, so the table can be extended
setting by setting across sessions. Why: the quick LBA stage ends 2-3 points under its float
model with its curve still rising, and W4A4 0.4-0.7 under it (results/quick-cpu*.md), so the
question is which schedule spends those few epochs best. With one seed per setting a difference
of a few tenths of a point may be noise; `--seeds` repeats every setting (data order, clip
calibration batch and allocator draws follow the seed) and the table adds each setting's mean.
`--stage` runs any stage that starts from W4A4 or float (lba_kd: LBA with distillation from the
float, an extension); `--epochs` lengthens it (folder `lr0.1-w0-4-e15`).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from dambq.pipeline import STAGES, stage_file

# what a stage's folder needs from --parent, by the stage it starts from (float: a distilling stage's teacher)
PARENT_FILES = {"w4a4": ("float.pt", "float.json", "w4a4.pt", "w4a4.json", "w4a4.csv"),
                "float": ("float.pt", "float.json", "float.csv")}
# every stage that starts from one of those: lba, lba_kd, w2a2_fixed; w4a4 and its variants
PARENTS = {name: spec.parent for name, spec in STAGES.items() if spec.parent in PARENT_FILES}


def parse_setting(text: str) -> tuple[float, tuple[int, int] | None]:
    """'0.05:0,4' -> (0.05, (0, 4)); '0.05' -> (0.05, None): the profile's window (or none: W4A4)."""
    lr, _, window = text.partition(":")
    if not window:
        return float(lr), None
    first, last = (int(v) for v in window.split(","))
    return float(lr), (first, last)


def window_label(window: tuple[int, int] | None) -> str:
    """(0, 4) -> '1-5': the epochs (counted from 1) in which bits are lowered; '-' for none."""
    return f"{window[0] + 1}-{window[1] + 1}" if window else "-"


def folder_name(lr: float, window: tuple[int, int] | None, seed: int = 0, epochs: int | None = None) -> str:
    return (f"lr{lr:g}" + (f"-w{window[0]}-{window[1]}" if window else "") + (f"-e{epochs}" if epochs else "")
            + (f"-s{seed}" if seed else ""))


def run_setting(stage: str, parent: Path, folder: Path, lr: float, window: tuple[int, int] | None, args,
                seed: int = 0) -> None:
    """Copy the parent's checkpoints into `folder` and run `stage` there (a finished one is kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PARENT_FILES[PARENTS[stage]]:
        if (parent / name).exists() and not (folder / name).exists():
            shutil.copy2(parent / name, folder / name)
    command = [sys.executable, "-m", "dambq.pipeline", "--profile", args.profile, "--stages", stage, "--out",
               str(folder), "--lr", f"{lr:g}", "--compile", args.compile, "--no-progress",
               *(["--window", f"{window[0]},{window[1]}"] if window else []), *(["--seed", str(seed)] if seed else []),
               *(["--epochs", str(args.epochs)] if args.epochs else []),
               *(["--data", args.data] if args.data else [])]
    summary = folder / f"{stage_file(stage, seed=seed)}.json"
    if not summary.exists() or not json.loads(summary.read_text()).get("finished"):
        subprocess.run(command, check=True)


def read_run(stage: str, folder: Path, seed: int = 0) -> dict:
    stem = stage_file(stage, seed=seed)
    summary = json.loads((folder / f"{stem}.json").read_text())
    with open(folder / f"{stem}.csv") as f:
        curve = [float(r["test_top1"]) for r in csv.DictReader(f) if r["test_top1"] not in ("", "None")]
    parent = json.loads((folder / f"{PARENTS[stage]}.json").read_text())
    window = summary.get("window")
    return {"lr": summary["schedule"]["lr"], "window": tuple(window) if window else None, "top1": summary["top1"],
            "best": summary["best_top1"], "curve": curve, "minutes": summary["minutes"],
            "device": summary["device"], "precision": summary["precision"], "parent": parent["top1"],
            "weight_avg": summary["weight_avg"], "act_avg": summary["act_avg"], "epochs": summary["epochs_done"],
            "seed": seed}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(PARENTS), default="lba")
    parser.add_argument("--parent", default="runs/quick", help="folder holding the parent checkpoint (and its float)")
    parser.add_argument("--settings", nargs="+", default=["0.02:0,4", "0.05:0,4"], help="LR:FIRST,LAST ...")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="run every setting with each seed")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the stage (else the profile's)")
    parser.add_argument("--root", default="runs/lba-schedule")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="results/lba-schedule.md")
    args = parser.parse_args(argv)
    parent, root = Path(args.parent), Path(args.root)
    start = PARENTS[args.stage]
    if not (parent / f"{start}.pt").exists():
        stages = "float" if start == "float" else "float,w4a4"
        raise SystemExit(f"{parent / (start + '.pt')} not found: run the {start} stage first "
                         f"(python -m dambq.pipeline --profile {args.profile} --stages {stages} --out {parent})")
    rows = []
    for seed in args.seeds:  # every setting once before any is repeated: a cut-off run still compares them all
        for text in args.settings:
            lr, window = parse_setting(text)
            folder = root / folder_name(lr, window, seed, args.epochs)
            run_setting(args.stage, parent, folder, lr, window, args, seed)
            rows.append({"folder": str(folder), **read_run(args.stage, folder, seed)})
            print(rows[-1], flush=True)
    float_top1 = json.loads((parent / "float.json").read_text())["top1"] if (parent / "float.json").exists() else None
    devices = sorted({r["device"] + ", " + r["precision"] for r in rows})
    allocates = STAGES[args.stage].allocate
    what = (f"its {args.stage} stage ({STAGES[args.stage].description}" + ("; targets W2.0A2.0)" if allocates else ")")
            + (f" for {args.epochs} epochs" if args.epochs else ""))
    stage_flag = "" if args.stage == "lba" else f" --stage {args.stage}"
    flags = f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0] else ""
    flags += f" --epochs {args.epochs}" if args.epochs else ""
    seeds_text = "one seed each" if len(args.seeds) == 1 else f"seeds {', '.join(map(str, args.seeds))} of each"
    lines = [f"# {args.stage} stage schedule: one parent, several learning rates"
             + (" and allocation windows" if allocates else ""), "",
             f"Command: `python benchmarks/lba_schedule.py{stage_flag} --parent {args.parent} --settings "
             f"{' '.join(args.settings)}{flags} --root {args.root} --out {args.out}`", "",
             f"Parent: {args.parent}/{start}.pt, top-1 {rows[0]['parent']:.2f}"
             + (f", from a float model at {float_top1:.2f}" if float_top1 is not None and start != "float" else "")
             + f". Profile {args.profile}: {what}, with the lr"
             + (" and window" if allocates else "") + f" below; {seeds_text}. Device: {'; '.join(devices)}.", "",
             "| lr | bits lowered in epochs | seed | top-1 final | best | "
             + ("final - float | " if float_top1 is not None else "") + "W avg | A avg | minutes | top-1 per epoch |",
             "|---|---|---|---|---|" + ("---|" if float_top1 is not None else "") + "---|---|---|---|"]
    for r in rows:
        gap = f" {r['top1'] - float_top1:+.2f} |" if float_top1 is not None else ""
        lines.append(f"| {r['lr']:g} | {window_label(r['window'])} | {r['seed']} | {r['top1']:.2f} | {r['best']:.2f} |"
                     f"{gap} {r['weight_avg']:.3f} | {r['act_avg']:.3f} | {r['minutes']:.1f} | "
                     + " ".join(f"{v:.1f}" for v in r["curve"]) + " |")
    if len(args.seeds) > 1:
        lines += ["", "Mean over seeds:", "", "| lr | bits lowered in epochs | seeds | top-1 final, mean | best, mean | "
                  + ("final - float, mean |" if float_top1 is not None else ""),
                  "|---|---|---|---|---|" + ("---|" if float_top1 is not None else "")]
        for text in args.settings:
            lr, window = parse_setting(text)
            group = [r for r in rows if (r["lr"], r["window"]) == (lr, window)]
            final, best = (sum(r[k] for r in group) / len(group) for k in ("top1", "best"))
            lines.append(f"| {lr:g} | {window_label(window)} | {len(group)} | {final:.2f} | {best:.2f} |"
                         + (f" {final - float_top1:+.2f} |" if float_top1 is not None else ""))
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return rows


if __name__ == "__main__":
    main()
