"""The allocation evidence: top-1 against bits for LBA and its rivals, with seeds.

    python benchmarks/allocation_frontier.py --profile quick --out runs/frontier     # hours on 2 CPU cores
    python benchmarks/allocation_frontier.py --profile smoke --out /tmp/f --seeds 1   # a dry run in seconds

From one trained W4A4 model (the `w4a4` stage of --out, trained first if missing), every
target x method x seed trains the profile's `lba` schedule: methods are LBA (the paper's
first-order signal), "fisher" (second order: squared gradient times the next decrement's
change squared), "random" (seeded control) and "uniform" (every channel at the target's
bits, no allocation); `dambq.lba.SIGNALS`. Each run is its own stage file
(``lba-<method>-W<w>A<a>-s<seed>``) and resumes if killed; rerunning reads finished runs back.
Writes results/allocation-frontier.md: top-1 as mean and range over runs, and the bits each
run landed on; and its figure, figures/allocation-frontier.png (`dambq.plots.allocation_frontier`,
the one notebook 03 draws), from the same runs, so report and figure never disagree.

Across machines: runs folders stay out of git, so a later session on a fresh clone trains a new
W4A4 parent. The runs the report already lists from other parents are kept in it (each run is
named by its parent, `dambq.report.parent_label`), and the new parent's runs are added beside them:
within one parent every method meets the same model, and the range over runs then also holds the
parent's own noise. A target x method x seed that a kept parent already finished is not
trained again (a fresh clone goes on where the last machine stopped, so the frontier fills in
across sessions); `--repeat` trains it on this parent too, `--fresh` starts the report over.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from dambq.pipeline import device_name, load_data, run_stage, stage_file
from dambq.profiles import get_profile, target_label
from dambq.report import frontier_run_lines, off_schedule, parent_label, read_frontier_runs
from dambq.train import resolve_device
from dambq.workbook import frontier_row, frontier_verdict

TARGETS = ((3.0, 3.0), (2.0, 2.0), (1.0, 2.0))
METHODS = ("lba", "fisher", "random", "uniform")


def finished(summary: Path) -> bool:
    return summary.exists() and json.loads(summary.read_text()).get("finished", False)


def landed(runs: list[dict], key: str) -> str:
    return ", ".join(f"{r[key]:.3f}" for r in runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", default="runs/frontier")
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default=";".join(f"{w},{a}" for w, a in TARGETS),
                        help="semicolon list of W,A pairs")
    parser.add_argument("--report", default="results/allocation-frontier.md")
    parser.add_argument("--fresh", action="store_true", help="drop the runs the report lists from other parents")
    parser.add_argument("--figure", default="figures/allocation-frontier.png",
                        help="the report's figure (a .png path), or none")
    parser.add_argument("--repeat", action="store_true",
                        help="also train the runs a kept parent already has (default: only the missing ones)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the report from the finished runs (and the kept ones)")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    out, device = Path(args.out), resolve_device(args.device)
    data = load_data(profile, args.data)
    if args.report_only:  # the parent is read, never trained
        if not finished(out / "w4a4.json"):
            raise SystemExit(f"--report-only: no finished w4a4 stage in {out}")
        parent = json.loads((out / "w4a4.json").read_text())
    else:
        for stage in ("float", "w4a4"):
            parent = run_stage(stage, profile, out, data=data, device=device, progress=False)
    parent = parent_label(parent)
    report = Path(args.report)
    # kept: runs of other parents, and runs of this very parent (the same label: device and W4A4 top-1) that
    # an earlier session recorded but whose files are not in this runs folder; a run finished here is read back
    earlier = [] if args.fresh or not report.exists() else [
        r for r in read_frontier_runs(report)
        if r["parent"] != parent or (not args.repeat and not finished(out / f"{r['file']}.json"))]
    off = next((why for r in earlier if (why := off_schedule(r, profile))), None)
    if off:  # methods are compared on equal training: runs of another profile or LBA length cannot join them
        raise SystemExit(f"{report} holds runs of {off}: pass another --report, or --fresh to start it over")
    if earlier:
        same = sum(r["parent"] == parent for r in earlier)
        print(f"kept from {report}: {len(earlier)} runs ({same} of this same parent, {parent}, whose files are not "
              "in this runs folder)", flush=True)
    targets = [tuple(float(v) for v in pair.split(",")) for pair in args.targets.split(";")]
    methods = args.methods.split(",")
    kept = set() if args.repeat else {(r["target"], r["method"], r["seed"]) for r in earlier}
    # seed-major: every target and method at seed 0 before any at seed 1, and the report rewritten after
    # every run, so a frontier stopped part-way leaves one complete seed and a valid (partial) report
    plan = [(seed, w, a, method) for seed in range(args.seeds) for w, a in targets for method in methods
            if (target_label(w, a), method, seed) not in kept]
    skipped = args.seeds * len(targets) * len(methods) - len(plan)
    if skipped:
        print(f"not trained again (a kept parent has them; --repeat to train them here): {skipped} runs", flush=True)
    runs = []  # this session's runs; `earlier` holds the kept ones
    for seed, weight_target, act_target, method in plan:
        allocator = {"signal": method, "seed": seed} if method != "lba" else None
        name = stage_file("lba", weight_target, act_target, method, seed)
        if args.report_only and not finished(out / f"{name}.json"):
            continue
        summary = run_stage("lba", profile, out, data=data, device=device, seed=seed, progress=False,
                            weight_target=weight_target, act_target=act_target, allocator_args=allocator)
        summary.pop("model")
        runs.append({"target": target_label(weight_target, act_target), "method": method, "seed": seed,
                     "parent": parent,
                     **{k: summary[k] for k in ("top1", "weight_avg", "act_avg", "epochs_done", "file")}})
        print(runs[-1], flush=True)
        write_report(args, profile, device, targets, methods, parent, runs, earlier, len(plan))
    write_report(args, profile, device, targets, methods, parent, runs, earlier, len(plan))
    print(Path(args.report).read_text())


def draw(every: list[dict], profile, path: Path, report: Path) -> None:
    """The report's runs as notebook 03 draws them: top-1 against weight bits per method, ranges over runs
    as error bars, the paper's points hollow."""
    from dambq import plots
    from dambq.workbook import PAPER_RESNET20_CIFAR10
    rows = [frontier_row(r) for r in every]
    fig = plots.allocation_frontier(rows, reference=PAPER_RESNET20_CIFAR10,
                                    title=f"Top-1 vs weight bits per allocation method ({profile.name} profile, "
                                          f"{len(rows)} runs, {report.name})")
    print(f"figure: {plots.save(fig, path.stem, path.parent)}")
    plots.plt.close(fig)  # redrawn after every run


def write_report(args, profile, device, targets, methods, parent: str, runs: list[dict],
                 earlier: list[dict], planned: int) -> None:
    """results/allocation-frontier.md from the runs finished so far on this parent (it says how many
    of the `planned` ones) and the earlier ones from other parents."""
    every = earlier + runs
    parents = list(dict.fromkeys(r["parent"] for r in every))
    lines = ["# Allocation frontier: LBA against a second-order signal, random allocation and no allocation", "",
             f"Command: `python benchmarks/allocation_frontier.py --profile {args.profile} --out {args.out} "
             f"--seeds {args.seeds} --targets '{args.targets}' --methods {args.methods}`", "",
             f"Profile `{profile.name}` ({profile.note}); every run: the profile's `lba` schedule "
             f"({profile.lba.epochs} epochs, window {list(profile.lba_window)}) from a trained W4A4 model, "
             f"its parent (on one parent all methods of a target and seed start from the same model; the parents "
             f"column says where a row spans several); device {device_name(device)}.", "",
             f"Runs finished on this parent ({parent}): {len(runs)} of {planned}"
             + (" (partial: rerun the command to go on; finished runs are read back)" if len(runs) < planned else "")
             + "." + (f" Kept from earlier sessions (their runs folders are not here): {len(earlier)} runs"
                      + (f", {sum(r['parent'] == parent for r in earlier)} of them from this same parent"
                         if any(r["parent"] == parent for r in earlier) else "") + "." if earlier else ""), ""]
    if args.figure != "none":
        link = Path(os.path.relpath(args.figure, Path(args.report).parent)).as_posix()  # from the report's folder
        lines += [f"Figure: [{args.figure}]({link}) (these runs, as notebook 03 draws them).", ""]
    lines += ["| target | method | top-1 mean (%) | range over runs | runs | parents | W avg landed | A avg landed |",
             "|---|---|---|---|---|---|---|---|"]
    labels = list(dict.fromkeys([target_label(w, a) for w, a in targets] + [r["target"] for r in every]))
    for label in labels:
        for method in dict.fromkeys(list(methods) + [r["method"] for r in every]):
            rs = [r for r in every if r["target"] == label and r["method"] == method]
            if not rs:
                continue
            tops = [r["top1"] for r in rs]
            lines.append(f"| {label} | {method} | {statistics.mean(tops):.2f} | {min(tops):.2f} - {max(tops):.2f} | "
                         f"{len(rs)} | {len({r['parent'] for r in rs})} | {landed(rs, 'weight_avg')} | "
                         f"{landed(rs, 'act_avg')} |")
    verdict = frontier_verdict([{k: r[k] for k in ("target", "method", "top1")} for r in every])
    lines += ["", "Where LBA separates from each rival, by the ranges over runs (its worst run above the rival's "
              "best, or its best below the rival's worst; `dambq.workbook.frontier_verdict`, which notebook 03 "
              "prints too):", ""] + [f"- {line}" for line in verdict]
    lines += ["", f"Every run ({len(parents)} parent{'s' if len(parents) != 1 else ''}):", ""] + frontier_run_lines(every)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines) + "\n")
    if args.figure != "none":  # with the report, so a frontier stopped part-way leaves the two agreeing
        draw(every, profile, Path(args.figure), Path(args.report))


if __name__ == "__main__":
    main()
