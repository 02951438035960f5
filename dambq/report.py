"""The markdown report of a runs folder: one row per finished stage, the allocation per epoch
and the per-layer bits of allocating stages (`python -m dambq.pipeline --report PATH`)."""
from __future__ import annotations

import json
from pathlib import Path

from .pipeline import STAGES
from .profiles import target_label


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.3f}"


SUMMARY_KEYS = ("stage", "description", "arch", "profile", "data", "device", "precision", "epochs", "top1", "minutes",
                "file")


def _best(summary: dict) -> str:
    if summary.get("best_top1") is None:
        return "-"
    return f"{summary['best_top1']:.2f} ({summary['best_epoch']})"


def _epoch_seconds(out: Path, summary: dict) -> str:
    """Median training seconds per epoch after the first (which also compiles and warms up), from the
    stage's per-epoch `<file>.csv`: the speed a reader compares across stages and machines."""
    import csv
    import statistics
    path = out / f"{summary['file']}.csv"
    if not path.exists():
        return "-"
    seconds = [float(row["train_seconds"]) for row in csv.DictReader(path.read_text().splitlines())]
    return f"{statistics.median(seconds[1:] or seconds):.1f}" if seconds else "-"


def _epochs(summary: dict) -> str:
    """A stopped stage says so (read_report reads it back as no result)."""
    if summary.get("finished", True):
        return str(summary["epochs"])
    return f"{summary.get('epochs_done', '?')} of {summary['epochs']} (stopped)"


def write_report(out: str | Path, path: str | Path, command: str) -> str:
    """Markdown of every finished stage in `out` (one row each, profile, data and device
    named per row), the allocation per epoch and the per-layer bits of LBA runs.

    Why generated: every number in results/ must come from a command anyone can rerun. Final
    top-1 is what tables report (as the paper does); the best epoch (1-based) is beside it."""
    out = Path(out)
    files = sorted(out.glob("*.json"))
    summaries = [json.loads(f.read_text()) for f in files]
    if not summaries:
        raise FileNotFoundError(f"no stage summaries (*.json) in {out}")
    for file, s in zip(files, summaries):
        missing = [key for key in SUMMARY_KEYS if key not in s]
        if missing:
            raise ValueError(f"{file} lacks {', '.join(missing)}: written by an older dambq; rerun its stage "
                             "(a finished stage is read back and its summary rewritten)")
    order = {name: i for i, name in enumerate(STAGES)}
    summaries.sort(key=lambda s: order.get(s["stage"], len(order)))
    lines = [f"# Results: {out}", "", f"Command: `{command}`", "",
             "| stage (file) | what | network | profile | data | device | training precision | act clips started | epochs "
             "| top-1 (%), final | best (epoch) | W avg | A avg | minutes | training s / epoch (median after the first) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        bits = (f"{s['weight_avg']:.3f} | {s['act_avg']:.3f}" if "weight_avg" in s else "32 | 32")
        clips = s.get("act_clip_init") or "-"
        lines.append(f"| {s['file']} | {s['description']} | {s['arch']} | {s['profile']} | {s['data']} | "
                     f"{s['device']} | "
                     f"{s['precision']} | {clips} | {_epochs(s)} | "
                     f"{s['top1']:.2f} | {_best(s)} | {bits} | {s['minutes']:.1f} | {_epoch_seconds(out, s)} |")
    chain = [s for s in summaries if s["stage"] in ("float", "w4a4")
             or (s["stage"] == "lba" and s.get("targets") == [2.0, 2.0])]
    if len(chain) == 3:
        lines += ["", "The paper's pipeline float -> W4A4 -> W2.0A2.0 (stages float, w4a4, lba) took "
                  f"{sum(s['minutes'] for s in chain):.1f} min of conversion, training and evaluation."]
    for s in summaries:
        if "allocation" not in s:
            continue
        w, a = s["targets"]
        first, last = s["window"]  # 0-based in the recipe (as V2's flags); epochs 1-based in tables
        lines += ["", f"## Allocation per epoch ({s['stage']}, targets {target_label(w, a)}, bits lowered in epochs "
                      f"{first + 1}-{last + 1})", "",
                  "| epoch | W avg | A avg | weight decrements | activation decrements |", "|---|---|---|---|---|"]
        lines += [f"| {r['epoch']} | {r['weight_avg']:.4f} | {r['act_avg']:.4f} | {r['weight_lowered']} | "
                  f"{r['act_lowered']} |" for r in s["allocation"]]
        bits_csv = out / f"{s['file']}-bits.csv"
        if bits_csv.exists():
            rows = [line.split(",") for line in bits_csv.read_text().splitlines()]
            lines += ["", "Per-layer bits at the end (`dambq.bit_report`):", "",
                      "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(_short(v) for v in row) + " |" for row in rows[1:]]
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text


TABLE_HEAD = "| stage (file) |"


def _table(lines: list[str], head: str) -> list[dict] | None:
    """The rows of the first markdown table whose header line starts with `head`, as dicts keyed by
    the header's cells (None when there is none): both readers below parse our own tables."""
    start = next((i for i, x in enumerate(lines) if x.startswith(head)), None)
    if start is None:
        return None
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip().strip("|").split("|")))))
    return rows


def read_report(path: str | Path) -> tuple[str, list[dict]]:
    """The runs folder a report was written from and one dict per stage row of its table.

    Why: runs folders stay out of git, so a fresh clone holds a stage's number only in the committed
    report written from it; notebook 03's table of published rows reads these where this machine has
    no run of its own (`dambq.workbook.published_rows`).

    Args:
        path: a report written by `write_report` (`python -m dambq.pipeline --report PATH`).

    Returns:
        (runs folder, rows), each row with file, arch, profile, epochs, top1 and finished.

    Raises:
        ValueError: the file is not such a report.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> summary = dict(stage="w4a4", description="W4A4", arch="resnet20", profile="quick", data="synthetic",
        ...                device="CPU", precision="fp32", epochs=5, top1=86.25, minutes=1.0, file="w4a4",
        ...                weight_avg=4.0, act_avg=4.0, finished=True)
        >>> _ = (folder / "w4a4.json").write_text(json.dumps(summary))
        >>> _ = write_report(folder, folder / "report.md", "python -m dambq.pipeline --report report.md")
        >>> read_report(folder / "report.md")[1]
        [{'file': 'w4a4', 'arch': 'resnet20', 'profile': 'quick', 'epochs': 5, 'top1': 86.25, 'finished': True}]
    """
    lines = Path(path).read_text().splitlines()
    cells = _table(lines, TABLE_HEAD) if lines and lines[0].startswith("# Results: ") else None
    if cells is None:
        raise ValueError(f"{path} is not a report written by `python -m dambq.pipeline --report`")
    rows = [{"file": cell["stage (file)"], "arch": cell["network"], "profile": cell["profile"],
             "epochs": int(cell["epochs"].split()[0]), "top1": float(cell["top-1 (%), final"]),
             "finished": "stopped" not in cell["epochs"]} for cell in cells]
    return lines[0].removeprefix("# Results: "), rows


FRONTIER_RUNS_HEAD = "| target | method | seed | parent | top-1 (%) | W avg | A avg | epochs | file |"


def parent_label(summary: dict) -> str:
    """Which W4A4 model an allocation run started from, as the frontier's tables name it: the device
    it was trained on and its top-1 (a runs folder rebuilt on another machine is another parent)."""
    return f"{summary['device']}; W4A4 {summary['top1']:.2f}"


def frontier_run_lines(runs: list[dict]) -> list[str]:
    """The "every run" table of results/allocation-frontier.md (benchmarks/allocation_frontier.py),
    one row per run (target, method, seed, parent, top1, weight_avg, act_avg, epochs_done, file);
    `read_frontier_runs` reads it back."""
    return [FRONTIER_RUNS_HEAD, "|---|---|---|---|---|---|---|---|---|"] + [
        f"| {r['target']} | {r['method']} | {r['seed']} | {r['parent']} | {r['top1']:.2f} | {r['weight_avg']:.3f} | "
        f"{r['act_avg']:.3f} | {r['epochs_done']} | {r['file']} |" for r in runs]


def off_schedule(run: dict, profile) -> str | None:
    """Why an allocation run cannot stand beside `profile`'s in one frontier, or None if it can: it
    trained another profile, or its `lba` stage for another number of epochs. `run` is a row of
    `read_frontier_runs` or a stage summary; a key it lacks is not held against it.

    Why: a frontier compares allocation methods on equal training. When the quick profile's LBA stage
    went from 10 to 15 epochs, notebook 03 drew its 15-epoch LBA run beside the report's 10-epoch
    rivals and called LBA the winner: the longer schedule, credited to the allocation. The frontier
    benchmark refuses such a report, notebook 03 leaves such runs out (`dambq.workbook.frontier_rows`).

    Example:
        >>> from dambq.profiles import get_profile
        >>> quick = get_profile("quick")
        >>> off_schedule({"profile": "quick", "epochs_done": quick.lba.epochs}, quick) is None
        True
        >>> off_schedule({"profile": "smoke", "epochs_done": 1}, quick)
        'profile smoke'
    """
    if run.get("profile", profile.name) != profile.name:
        return f"profile {run['profile']}"
    if run.get("epochs_done", profile.lba.epochs) != profile.lba.epochs:
        return f"{run['epochs_done']} LBA epochs, not the {profile.name} profile's {profile.lba.epochs}"
    return None


def read_frontier_runs(path: str | Path) -> list[dict]:
    """The runs of an allocation-frontier report, as `frontier_run_lines` wrote them, each with the
    profile its header names.

    Why: runs folders stay out of git and a fresh clone may be on another machine, so a frontier
    spanning sessions keeps its earlier runs only in its committed report; they are kept beside the
    new ones, each named by its parent W4A4 model. Reports from before the parent column name the
    header's device and "W4A4 not recorded".

    Raises:
        ValueError: the file has no such table.

    Example:
        >>> import tempfile
        >>> run = dict(target="W2.0A2.0", method="lba", seed=0, parent="CPU; W4A4 86.19", top1=84.5,
        ...            weight_avg=2.0, act_avg=2.0, epochs_done=10, file="lba")
        >>> path = Path(tempfile.mkdtemp()) / "frontier.md"
        >>> header = ["# Allocation frontier", "", "Profile `quick` (...); device CPU.", ""]
        >>> _ = path.write_text("\\n".join(header + frontier_run_lines([run])) + "\\n")
        >>> read_frontier_runs(path) == [{**run, "profile": "quick"}]
        True
    """
    import re
    lines = Path(path).read_text().splitlines()
    cells = _table(lines, "| target | method | seed |")
    if cells is None:
        raise ValueError(f"{path} has no table of every run (written by benchmarks/allocation_frontier.py)")
    device = next((m.group(1) for x in lines if (m := re.search(r".*; device (.+?)\.$", x))), "device not recorded")
    profile = next((m.group(1) for x in lines if (m := re.match(r"Profile `(\w+)`", x))), None)
    return [{"target": cell["target"], "method": cell["method"], "seed": int(cell["seed"]),
             "parent": cell.get("parent", f"{device}; W4A4 not recorded"), "top1": float(cell["top-1 (%)"]),
             "weight_avg": float(cell["W avg"]), "act_avg": float(cell["A avg"]), "epochs_done": int(cell["epochs"]),
             "file": cell["file"], "profile": profile} for cell in cells]
