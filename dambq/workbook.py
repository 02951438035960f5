"""The workbook: notebooks 01-04 run in order with papermill, and the helpers they share.

    python -m dambq.workbook --profile auto     # "paper" on CUDA, else "quick"
    python -m dambq.workbook --profile smoke    # about a minute: checks that everything runs

Each notebook is executed with its `parameters` cell overridden (profile, device,
data root, runs folder); the executed copies go to runs/<profile>/notebooks/.
All three use the same runs folder, so 02 and 03 read back the checkpoints of the
stages before them instead of training them again, and a killed run resumes.
Figures go to figures/<name>.png, except for the smoke profile, whose figures go
to runs/smoke/figures/ so that tests never overwrite the real ones.

The helpers below keep the notebooks free of logic: paths, chaining a checkpoint
in, one line per epoch, and rows for result tables.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .profiles import PROFILES, get_profile, target_label  # noqa: F401 (notebooks call wb.target_label)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_distribution_analysis.ipynb", "02_global_precision.ipynb", "03_channelwise_allocation.ipynb",
             "04_deployment.ipynb")
KERNEL = "python3"

# Published ResNet20 / CIFAR-10 top-1 (spec section 5), for accuracy-vs-bits figures.
PAPER_RESNET20_CIFAR10: list[dict[str, Any]] = [
    {"label": "paper W4A4", "weight_bits": 4.0, "act_bits": 4.0, "top1": 92.45},
    {"label": "paper W2.0A2.0", "weight_bits": 2.0, "act_bits": 2.0, "top1": 91.69},
    {"label": "paper W1.0A2.0", "weight_bits": 1.0, "act_bits": 2.0, "top1": 90.39},
    {"label": "V2 code W2.0A2.0", "weight_bits": 2.008, "act_bits": 2.049, "top1": 92.13},
]


# Every result row the paper and the authors' V2 code publish (spec section 5), with the stages
# and targets that run it (`python -m dambq.pipeline --profile paper <args>`).
PUBLISHED_ROWS: list[dict[str, Any]] = [
    {"network": "ResNet20", "arch": "resnet20", "setting": "W4A4", "paper": 92.45, "V2 code": 92.71,
     "stage": "w4a4", "targets": (2.0, 2.0), "args": "--stages float,w4a4"},
    {"network": "ResNet20", "arch": "resnet20", "setting": "W2.0A2.0", "paper": 91.69, "V2 code": 92.13,
     "stage": "lba", "targets": (2.0, 2.0), "args": "--stages float,w4a4,lba"},
    {"network": "ResNet20", "arch": "resnet20", "setting": "W1.0A2.0", "paper": 90.39, "V2 code": None,
     "stage": "lba", "targets": (1.0, 2.0), "args": "--stages float,w4a4,lba --weight-target 1.0"},
    {"network": "ResNet20", "arch": "resnet20", "setting": "W2.0A32", "paper": 92.68, "V2 code": None,
     "stage": "lba_a32", "targets": (2.0, None),
     "args": "--stages float,w4a32,lba_a32 --weight-target 2.0 --act-target none"},
    {"network": "ResNet20", "arch": "resnet20", "setting": "W1.0A32", "paper": 91.19, "V2 code": None,
     "stage": "lba_a32", "targets": (1.0, None),
     "args": "--stages float,w4a32,lba_a32 --weight-target 1.0 --act-target none"},
    {"network": "VGG-small", "arch": "vgg_small", "setting": "W4A4", "paper": 93.99, "V2 code": None,
     "stage": "w4a4", "targets": (2.0, 2.0), "args": "--arch vgg_small --stages float,w4a4"},
    {"network": "VGG-small", "arch": "vgg_small", "setting": "W1.0A2.0", "paper": 93.87, "V2 code": None,
     "stage": "lba", "targets": (1.0, 2.0), "args": "--arch vgg_small --stages float,w4a4,lba --weight-target 1.0"},
    {"network": "VGG-small", "arch": "vgg_small", "setting": "W0.7A32", "paper": 93.61, "V2 code": None,
     "stage": "lba_a32", "targets": (0.7, None),
     "args": "--arch vgg_small --stages float,w4a32,lba_a32 --weight-target 0.7 --act-target none"},
    {"network": "ResNet18, ImageNet", "arch": "resnet18", "setting": "W2.0A2.0 / W2.0A32 / W1.0A32",
     "paper": "67.8 / 70.0 / 65.88", "V2 code": None, "stage": None, "targets": None,
     "args": "python -m dambq.pipeline --profile imagenet --data ROOT --stages float,w4a4,lba (needs a real ImageNet)"},
]


def published_rows(runs_dir: str | Path, siblings: bool = True, reports: tuple[str | Path, ...] = ()):
    """The published rows beside our own result for each: the first finished stage for the same
    network and targets in `runs_dir`, with `siblings` in the folders beside it named `<its name>-*`,
    then in the committed `reports` (a summary's profile is named with its number: a short profile
    is not a reproduction).

    Why siblings: one network's chain lives in one folder (runs/quick holds ResNet20's; the README's
    `--arch vgg_small --out runs/quick-vgg` puts VGG-small's beside it), and notebook 03's table should
    show a number wherever this machine has one. Why reports: runs folders stay out of git, so on a
    fresh clone a run made elsewhere survives only in the report written from it (`dambq.report`).

    Args:
        runs_dir: the notebook's runs folder, searched first.
        siblings: also search `<runs_dir>-*`, in name order.
        reports: results/*.md files written by `python -m dambq.pipeline --report`, read last, in order.

    Returns:
        A DataFrame indexed by (network, setting); "ours" names the folder or report each number came from.

    Example:
        >>> published_rows("runs/none-here").loc[("VGG-small", "W4A4"), "ours"]
        '-'
    """
    import json

    import pandas as pd
    from .pipeline import stage_file
    from .report import read_report
    first = Path(runs_dir)
    folders = [first] + (sorted(p for p in first.parent.glob(f"{first.name}-*") if p.is_dir()) if siblings else [])
    found: list[tuple[str, dict]] = []  # (where, summary) in search order
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            summary = json.loads(path.read_text())
            if isinstance(summary, dict) and "arch" in summary:
                found.append((folder.name, {**summary, "file": path.stem}))
    for report in reports:
        found += [(str(report), {**row, "epochs_done": row["epochs"]}) for row in read_report(report)[1]]
    rows = []
    for row in PUBLISHED_ROWS:
        ours = "-"
        name = stage_file(row["stage"], *row["targets"]) if row["stage"] is not None else None
        for where, s in found:
            if s["file"] == name and s["arch"] == row["arch"] and s.get("finished", True):
                ours = f"{s['top1']:.2f} ({s['profile']} profile, {s['epochs_done']} epochs; {where})"
                break
        rows.append({"network": row["network"], "setting": row["setting"], "paper": row["paper"],
                     "V2 code": row["V2 code"] if row["V2 code"] is not None else "-",
                     "command": f"python -m dambq.pipeline --profile paper {row['args']}"
                     if row["stage"] else row["args"], "ours": ours})
    return pd.DataFrame(rows).set_index(["network", "setting"])


def frontier_rows(runs_dir: str | Path, report: str | Path | None = None, profile: str | None = None) -> list[dict]:
    """One row per finished allocating `lba` run in a runs folder (benchmarks/allocation_frontier.py
    writes them): method (the allocator's signal), target, seed, parent, top-1 and the bits it landed
    on; with `report` (the frontier's results/allocation-frontier.md) also the runs it lists that this
    folder does not hold (from other W4A4 parents, or from this one by a session whose folder is gone),
    which is all of them on a clone that has not run the frontier itself; with
    `profile`, only the runs of that profile's LBA schedule (`dambq.report.off_schedule`: a smoke
    notebook draws no quick runs, a 15-epoch LBA run no 10-epoch rivals), with a warning that names
    what was left out.

    Example:
        >>> frontier_rows("runs/none-here")
        []
    """
    import json

    from .report import parent_label, read_frontier_runs
    runs_dir = Path(runs_dir)
    prof = get_profile(profile) if profile is not None else None
    parent_file = runs_dir / "w4a4.json"
    parent = parent_label(json.loads(parent_file.read_text())) if parent_file.exists() else None
    rows, found = [], []
    for path in sorted(runs_dir.glob("lba*.json")):
        s = json.loads(path.read_text())
        if s.get("stage") != "lba" or not s.get("finished"):
            continue
        found.append(s)
        rows.append({"method": s.get("allocator", {}).get("signal", "lba"), "target": target_label(*s["targets"]),
                     "seed": s.get("seed", 0), "parent": parent, "top1": s["top1"], "weight_bits": s["weight_avg"],
                     "act_bits": s["act_avg"], "file": path.stem})
    if prof is not None:
        rows = _on_schedule(rows, found, prof, runs_dir)
    if report is not None and Path(report).exists():
        here = rows[:]
        recorded = [r for r in read_frontier_runs(report) if not any(_same_run(r, f) for f in here)]
        if prof is not None:
            recorded = _on_schedule(recorded, recorded, prof, report)
        rows += [frontier_row(r) for r in recorded]
    return rows


def _on_schedule(rows: list, runs: list[dict], profile, source) -> list:
    """`rows` less those whose run (same place in `runs`) is off `profile`'s schedule, with a warning naming them."""
    import warnings

    from .report import off_schedule
    why = [off_schedule(run, profile) for run in runs]
    told = [w for run, w in zip(runs, why) if w and run.get("profile", profile.name) == profile.name]
    if told:  # runs of another profile go unmentioned: a smoke notebook would otherwise warn about every quick run
        count = len(told)
        warnings.warn(f"{count} run{'s' if count > 1 else ''} of {source} left out: "
                      f"{', '.join(sorted(set(told)))} (python benchmarks/allocation_frontier.py "
                      f"--profile {profile.name} --fresh trains a frontier of its own)", stacklevel=3)
    return [row for row, w in zip(rows, why) if not w]


def _same_run(recorded: dict, found: dict) -> bool:
    """Whether a report's run is one this runs folder holds: the same target, method and seed from this
    parent, or the same stage file with the same top-1 (a run recorded before reports named the W4A4
    top-1 of its parent, "W4A4 not recorded", read back from the folder of that very parent)."""
    same = all(recorded[k] == found[k] for k in ("target", "method", "seed"))
    return same and (recorded["parent"] == found["parent"]
                     or (recorded["file"] == found["file"] and abs(recorded["top1"] - found["top1"]) < 5e-3))


def frontier_row(run: dict) -> dict:
    """A run of an allocation-frontier report (`dambq.report.read_frontier_runs`) as the frontier
    figure and verdict take it (`plots.allocation_frontier`, `frontier_verdict`)."""
    return {"method": run["method"], "target": run["target"], "seed": run["seed"], "parent": run["parent"],
            "top1": run["top1"], "weight_bits": run["weight_avg"], "act_bits": run["act_avg"], "file": run["file"]}


def frontier_verdict(rows: list[dict], against: str = "lba") -> list[str]:
    """Plain sentences: per target, whether `against` beats each other method by more than the
    seed ranges (its worst seed above the other's best), or not; with one run on either side there
    is no range, and the sentence says so instead of calling a difference of any size a win. It
    counts runs, not seeds: a frontier spanning sessions has runs of one seed from two W4A4 parents
    (benchmarks/allocation_frontier.py)."""
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r["top1"] for r in rows if r["target"] == target and r["method"] == against]
        if not mine:
            continue
        for method in dict.fromkeys(r["method"] for r in rows if r["target"] == target and r["method"] != against):
            other = [r["top1"] for r in rows if r["target"] == target and r["method"] == method]
            gap = sum(mine) / len(mine) - sum(other) / len(other)
            if min(len(mine), len(other)) < 2:
                verdict = "has no seed range to be judged against (one run)"
            elif min(mine) > max(other):
                verdict = "beats it by more than the seed range"
            elif max(mine) < min(other):
                verdict = "loses to it by more than the seed range"
            else:
                verdict = "is within the seed range of it"
            lines.append(f"{target}: {against} {verdict} ({method}; mean difference {gap:+.2f} points, "
                         f"{len(mine)} vs {len(other)} runs)")
    return lines


def resolve_profile(name: str) -> str:
    """"auto" -> "paper" when CUDA is available, else "quick"; other names are checked."""
    if name == "auto":
        return "paper" if torch.cuda.is_available() else "quick"
    get_profile(name)  # raises for an unknown name
    return name


def find_root(start: str | Path | None = None) -> Path:
    """The repository root: the first folder at or above `start` (default: cwd) holding
    dambq/ and notebooks/, else the folder above this package.

    Why: notebooks chdir there, so runs/ and figures/ land in one place whether the
    kernel starts in notebooks/ (Jupyter, nbval), the root (papermill) or elsewhere."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dambq" / "__init__.py").is_file() and (folder / "notebooks").is_dir():
            return folder
    return REPO_ROOT


def output_dirs(profile: str, runs_dir: str | Path | None = None,
                figures_dir: str | Path = "figures") -> tuple[Path, Path]:
    """(runs folder, figures folder) for a profile: runs/<profile> by default (under
    $DAMBQ_RUNS instead when it is set: `make test` points it at a fresh folder, so nbval never
    reads back stages trained by older code); figures in `figures_dir` except for smoke,
    which writes them under its runs folder."""
    base = Path(os.environ.get("DAMBQ_RUNS") or "runs")
    runs = Path(runs_dir) if runs_dir is not None else base / profile
    figures = runs / "figures" if profile == "smoke" else Path(figures_dir)
    runs.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    return runs, figures


@dataclass
class Setup:
    """What a notebook's set-up cell gives the rest of it (see `setup`)."""

    profile: str
    prof: Any
    runs_dir: Path
    fig_dir: Path
    device: str

    def keep(self, fig, name: str) -> None:
        """Save a figure as <fig_dir>/<name>.png (it is shown below the cell as well)."""
        from . import plots
        print(f"saved {plots.save(fig, name, self.fig_dir)}")


def setup(profile: str = "auto", runs_dir: str | Path | None = None, figures_dir: str | Path = "figures",
          device: str = "auto", **profile_overrides) -> Setup:
    """The set-up every notebook shares, in one call: work from the repository root, resolve the
    profile, make the runs and figures folders, set pandas' display, and say all of it.

    Args:
        profile, runs_dir, figures_dir, device: the notebook's `parameters` cell values.
        **profile_overrides: passed to `get_profile` (e.g. act_clip_init).
    """
    import warnings

    import pandas as pd
    os.chdir(find_root())  # runs/ and figures/ in one place wherever the kernel started
    warnings.formatwarning = _plain_warning
    profile = resolve_profile(profile)
    prof = get_profile(profile, **profile_overrides)
    runs, figures = output_dirs(profile, runs_dir, figures_dir)
    pd.set_option("display.precision", 4)
    pd.set_option("display.width", 160)
    print(f"profile {profile}: {prof.note}")
    print(f"runs in {runs}/, figures in {figures}/, device {device}")
    return Setup(profile, prof, runs, figures, device)


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a notebook shows it: its kind and message, not the kernel's temporary file for the
    cell ("/tmp/ipykernel_123/456.py:1:"), which says nothing and would be committed with the outputs."""
    return f"{category.__name__}: {message}\n"


def print_epoch(record: dict) -> None:
    """One line per finished epoch (pass as run_stage's on_epoch_end): readable in saved notebooks."""
    bits = f", W{record['weight_avg']:.2f}A{record['act_avg']:.2f}" if "weight_avg" in record else ""
    print(f"  {record['stage']} epoch {record['epoch']}: train loss {record['train_loss']:.3f}, "
          f"{top1_label(record)}{bits} ({record['seconds']:.1f} s)", flush=True)


def top1_label(record: dict) -> str:
    """'test top-1 87.07%', or 'not evaluated' for an epoch that StageConfig.eval_every skips."""
    return "not evaluated" if record["test_top1"] is None else f"test top-1 {record['test_top1']:.2f}%"


def show_figures(make) -> list:
    """Draw figures inside a widget callback so that they appear every time.

    Why: a callback runs outside a cell's execution, and the inline backend's post-execute
    hooks (run for the widget messages) flush and close any open pyplot figure, often before
    it is displayed: blank rectangles in a real browser. Figures made under `plt.ioff()`,
    closed, then displayed explicitly are never touched by those hooks.

    Args:
        make: () -> the figures (or one figure), built by `dambq.plots` calls.
    """
    import matplotlib.pyplot as plt
    from IPython.display import display
    with plt.ioff():
        figures = make()
    figures = list(figures) if isinstance(figures, (list, tuple)) else [figures]
    for fig in figures:
        plt.close(fig)
        display(fig)
    return figures


class RunButton:
    """A button that runs one training job at a time, with a status line and an epoch bar.

    While it runs the button is disabled (a second click cannot queue a second run), the
    status line says at once what is training, and the bar advances per epoch; output and
    figures go to the widget's own output area (figures via `show_figures`).

    Args:
        description: the button's label.
        job: (progress) -> None, called on click; it calls `progress.start(what, epochs)` and
            passes `progress.epoch` as run_stage's on_epoch_end.
        controls: widgets shown beside the button (e.g. sliders).
    """

    def __init__(self, description: str, job, controls: list | tuple = ()):
        import ipywidgets as widgets
        self.job, self.running, self._what = job, False, "training"
        self.button = widgets.Button(description=description, button_style="primary", icon="play")
        self.status = widgets.Label("")
        self.bar = widgets.IntProgress(value=0, min=0, max=1, layout={"width": "240px", "visibility": "hidden"})
        self.output = widgets.Output()
        self.widget = widgets.VBox([widgets.HBox([*controls, self.button]), widgets.HBox([self.bar, self.status]),
                                    self.output])
        self.button.on_click(self._click)

    def start(self, what: str, epochs: int) -> None:
        self.bar.max, self.bar.value = max(1, epochs), 0
        self.bar.layout.visibility = "visible"
        self.status.value = f"{what}: starting (setup and the first epoch come first)"
        self._what = what

    def epoch(self, record: dict) -> None:
        self.bar.value = min(self.bar.max, self.bar.value + 1)
        self.status.value = (f"{self._what}: epoch {record['epoch']} of {self.bar.max} done, "
                             f"{top1_label(record)}")
        print_epoch(record)

    def _click(self, _) -> None:
        if self.running:  # a click while running does nothing
            return
        self.running, self.button.disabled = True, True
        self.status.value = "starting"
        try:
            with self.output:
                self.output.clear_output(wait=True)
                self.job(self)
            self.status.value = f"{self.status.value} - finished"
        except Exception as error:  # shown, not swallowed: the traceback is in the output area
            self.status.value = f"failed: {type(error).__name__}: {error}"
            with self.output:
                raise
        finally:
            self.running, self.button.disabled = False, False
            self.bar.layout.visibility = "hidden"

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def summary_row(summary: dict) -> dict:
    """A run_stage summary without the model and allocation history: one row of a results table."""
    keys = ("stage", "description", "profile", "data", "device", "epochs", "top1", "weight_avg", "act_avg",
            "minutes")
    return {k: summary.get(k) for k in keys}


def describe(summary: dict) -> str:
    """One line naming the stage, its top-1 and bits, and where it ran."""
    bits = f" at W{summary['weight_avg']:.2f}A{summary['act_avg']:.2f}" if "weight_avg" in summary else ""
    return (f"{summary['stage']}: top-1 {summary['top1']:.2f}%{bits} ({summary['profile']} profile, "
            f"{summary['epochs']} epochs, {summary['data']} data, {summary['device']}, "
            f"{summary['minutes']:.1f} min incl. conversion and evaluation)")


def accuracy_point(summary: dict, label: str | None = None) -> dict:
    """A point for plots.accuracy_vs_bits from a quantized stage's summary."""
    return {"label": label or summary["stage"], "stage": summary["stage"], "top1": summary["top1"],
            "weight_bits": summary["weight_avg"], "act_bits": summary["act_avg"]}


def adopt_checkpoint(checkpoint: str | Path, runs_dir: str | Path, stage: str = "float") -> Path:
    """Copy a stage checkpoint written by dambq (fit) into `runs_dir`, so run_stage reads it back.

    A checkpoint trained for fewer epochs than the profile's is continued by run_stage.
    Refuses to replace a different checkpoint already there (the later stages were
    built from that one): pick a fresh runs_dir instead."""
    source, target = Path(checkpoint), Path(runs_dir) / f"{stage}.pt"
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint at {source}")
    if target.exists():
        if target.resolve() == source.resolve() or target.read_bytes() == source.read_bytes():
            return target
        raise FileExistsError(f"{target} exists and differs from {source}; use another runs_dir "
                              "(stages after it were trained from the existing one)")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return target


def run_notebooks(profile: str = "auto", device: str = "auto", data_root: str | None = None,
                  runs_dir: str | None = None, figures_dir: str = "figures",
                  output_dir: str | Path | None = None, notebooks: tuple[str, ...] = NOTEBOOKS,
                  extra: dict[str, dict[str, Any]] | None = None, root: Path | None = None) -> list[Path]:
    """Execute the notebooks in order with papermill; returns the executed copies.

    extra: more parameters per notebook file name (e.g. LBA targets for 03)."""
    import papermill

    root = root or find_root(REPO_ROOT)
    profile = resolve_profile(profile)
    output = Path(output_dir) if output_dir else root / "runs" / profile / "notebooks"
    output.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "device": device, "figures_dir": figures_dir}
    if data_root is not None:
        params["data_root"] = data_root
    if runs_dir is not None:
        params["runs_dir"] = runs_dir
    done = []
    for i, name in enumerate(notebooks, 1):
        source, target = root / "notebooks" / name, output / name
        print(f"[{i}/{len(notebooks)}] {name} (profile {profile}) -> {target}", flush=True)
        started = time.perf_counter()
        papermill.execute_notebook(str(source), str(target), parameters={**params, **(extra or {}).get(name, {})},
                                   kernel_name=KERNEL, cwd=str(root), progress_bar=False,
                                   stdout_file=sys.stdout, stderr_file=sys.stderr)
        print(f"[{i}/{len(notebooks)}] {name} done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        done.append(target)
    return done


def commit_outputs(executed: list[Path], notebooks_dir: Path = REPO_ROOT / "notebooks") -> list[Path]:
    """Copy executed notebooks over the committed ones, without papermill's injected
    parameters cell, so that their outputs show a real run while running them top to
    bottom (and nbval) still uses the default `parameters` cell (the smoke profile).

    Why not keep the injected cell: it would make every later run, CI's nbval
    included, repeat the long profile."""
    import nbformat

    written = []
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        nb.metadata.pop("papermill", None)
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
        target = notebooks_dir / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def notebook_path(path: str | Path) -> str:
    """A path given on the command line, as the notebooks (which run from the repository root) take it:
    relative to the repository root when inside it, else absolute; relative paths are read from the
    caller's folder.

    Why: the executed notebooks print their folders, and committed outputs that name one machine's
    checkout ("runs in /home/me/dambq/runs/...") are wrong on every other.

    Example:
        >>> notebook_path(REPO_ROOT / "runs" / "quick-e15")
        'runs/quick-e15'
    """
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(resolved)


def main(argv: list[str] | None = None) -> None:
    """Command line: python -m dambq.workbook --profile auto|smoke|quick|paper [--device] [--data]."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="auto", choices=["auto", *PROFILES])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--data", default=None, help="CIFAR-10 root (else DAMBQ_DATA, else ../shared/data)")
    parser.add_argument("--runs-dir", default=None, help="checkpoints and metrics (default runs/<profile>)")
    parser.add_argument("--figures-dir", default="figures", help="figures (the smoke profile uses runs/smoke/figures)")
    parser.add_argument("--out", default=None, help="executed notebooks (default runs/<profile>/notebooks)")
    parser.add_argument("--float-checkpoint", default=None, help="02: use this float checkpoint instead of training")
    parser.add_argument("--weight-target", type=float, default=2.0, help="03: LBA weight target")
    parser.add_argument("--act-target", type=float, default=2.0, help="03: LBA activation target")
    parser.add_argument("--only", default=None, help="comma list of notebook numbers to run, e.g. 02,03")
    parser.add_argument("--commit-outputs", action="store_true",
                        help="copy the executed notebooks over notebooks/ (their first cell should name "
                             "the profile; tests check the outputs against it)")
    args = parser.parse_args(argv)
    for key in ("data", "runs_dir", "float_checkpoint", "figures_dir"):  # "figures": the repository's
        if getattr(args, key) and (key != "figures_dir" or args.figures_dir != "figures"):
            setattr(args, key, notebook_path(getattr(args, key)))
    if args.out:  # where this process writes the executed copies: read from the caller's folder
        args.out = str(Path(args.out).expanduser().resolve())
    profile = resolve_profile(args.profile)
    notebooks = NOTEBOOKS if not args.only else tuple(
        n for n in NOTEBOOKS if n.split("_")[0] in {s.strip().zfill(2) for s in args.only.split(",")})
    extra = {NOTEBOOKS[1]: {"float_checkpoint": args.float_checkpoint} if args.float_checkpoint else {},
             NOTEBOOKS[2]: {"weight_target": args.weight_target, "act_target": args.act_target}}
    started = time.perf_counter()
    print(f"dambq workbook: profile {profile} ({get_profile(profile).note}), device {args.device}", flush=True)
    paths = run_notebooks(profile, args.device, args.data, args.runs_dir, args.figures_dir, args.out,
                          notebooks, extra)
    print(f"all {len(paths)} notebooks done in {(time.perf_counter() - started) / 60:.1f} min; "
          f"executed copies in {paths[0].parent if paths else '-'}", flush=True)
    if args.commit_outputs:
        for path in commit_outputs(paths):
            print(f"outputs committed to {path}")


if __name__ == "__main__":
    main()
