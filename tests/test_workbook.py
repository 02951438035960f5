"""The workbook's helpers (paths, chaining checkpoints in, rows) and the notebook pairs; no training."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from dambq import workbook as wb
from dambq.pipeline import stage_file
from dambq.profiles import PROFILES, get_profile

ROOT = Path(__file__).resolve().parent.parent


def test_resolve_profile(monkeypatch):
    monkeypatch.setattr(wb.torch.cuda, "is_available", lambda: False)
    assert wb.resolve_profile("auto") == "quick"
    monkeypatch.setattr(wb.torch.cuda, "is_available", lambda: True)
    assert wb.resolve_profile("auto") == "paper"
    assert wb.resolve_profile("smoke") == "smoke"
    with pytest.raises(ValueError):
        wb.resolve_profile("nope")


def test_output_dirs_keep_smoke_figures_out_of_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAMBQ_RUNS", raising=False)
    runs, figures = wb.output_dirs("smoke")
    assert runs == Path("runs/smoke") and figures == Path("runs/smoke/figures") and figures.is_dir()
    runs, figures = wb.output_dirs("quick", figures_dir="figs")
    assert runs == Path("runs/quick") and figures == Path("figs")
    runs, _ = wb.output_dirs("paper", runs_dir=tmp_path / "elsewhere")
    assert runs == tmp_path / "elsewhere" and runs.is_dir()
    monkeypatch.setenv("DAMBQ_RUNS", str(tmp_path / "fresh"))  # make test's fresh folder for nbval
    assert wb.output_dirs("smoke")[0] == tmp_path / "fresh" / "smoke"


def test_commit_outputs_drops_the_injected_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'smoke'"), nbformat.v4.new_code_cell("profile = 'quick'")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.cells[1].metadata["tags"] = ["injected-parameters"]
    (tmp_path / "run").mkdir()
    nbformat.write(nb, tmp_path / "run" / "x.ipynb")
    (tmp_path / "nb").mkdir()
    [out] = wb.commit_outputs([tmp_path / "run" / "x.ipynb"], tmp_path / "nb")
    assert [c.source for c in nbformat.read(out, as_version=4).cells] == ["profile = 'smoke'"]


def test_stage_files_carry_allocation_targets():
    assert stage_file("lba", 2.0, 2.0) == "lba"
    assert stage_file("lba", 1.5, 2) == "lba-W1.5A2.0"
    assert stage_file("lba", None, 2.0) == "lba-W32A2.0"  # the kind left float reads 32, as in the paper
    assert stage_file("lba_a32", 1.0, None) == "lba_a32-W1.0A32"
    assert stage_file("w4a4", 1.0, 1.0) == "w4a4"


def test_adopt_checkpoint(tmp_path):
    source = tmp_path / "mine.pt"
    source.write_bytes(b"float weights")
    runs = tmp_path / "runs"
    target = wb.adopt_checkpoint(source, runs)
    assert target == runs / "float.pt" and target.read_bytes() == b"float weights"
    assert wb.adopt_checkpoint(source, runs) == target  # same content: fine
    other = tmp_path / "other.pt"
    other.write_bytes(b"different")
    with pytest.raises(FileExistsError):
        wb.adopt_checkpoint(other, runs)
    with pytest.raises(FileNotFoundError):
        wb.adopt_checkpoint(tmp_path / "missing.pt", runs)


def test_rows_and_lines():
    summary = {"stage": "lba", "description": "d", "profile": "smoke", "data": "synthetic", "device": "CPU",
               "epochs": 3, "top1": 91.5, "weight_avg": 2.0, "act_avg": 1.98, "minutes": 0.2, "model": object(),
               "allocation": []}
    row = wb.summary_row(summary)
    assert "model" not in row and "allocation" not in row and row["device"] == "CPU"
    assert "W2.00A1.98" in wb.describe(summary) and "smoke profile" in wb.describe(summary)
    assert wb.accuracy_point(summary, "LBA")["weight_bits"] == 2.0


def test_find_root(tmp_path):
    assert wb.find_root(ROOT / "notebooks") == ROOT
    assert wb.find_root(tmp_path) == wb.REPO_ROOT


def test_notebooks_and_their_text_pairs_are_in_sync():
    """The .py (jupytext py:percent) files are the source people edit; each .ipynb beside it must
    hold the same cells (`jupytext --sync notebooks/*.py` after an edit)."""
    import jupytext
    for name in wb.NOTEBOOKS:
        notebook = ROOT / "notebooks" / name
        committed, text = jupytext.read(notebook), jupytext.read(notebook.with_suffix(".py"))
        assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in text.cells], \
            f"{name} and its .py differ: run `jupytext --sync {notebook.with_suffix('.py').relative_to(ROOT)}`"
        assert committed.metadata["jupytext"]["formats"] == "ipynb,py:percent"
        params = [c for c in committed.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1
        for key in ("profile = \"smoke\"", "data_root = None", "device = \"auto\"", "runs_dir = None",
                    "figures_dir = \"figures\""):
            assert key in params[0].source, (name, key)


def test_committed_outputs_come_from_the_profile_the_notebook_names():
    """Running a notebook in JupyterLab under the default smoke profile and saving it would put
    smoke outputs over the committed ones: refused here."""
    for name in wb.NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        named = re.search(r"from the `(\w+)` profile", nb.cells[0].source)
        outputs = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                          for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        if named is None:
            assert not outputs.strip(), f"{name} has outputs but its first cell names no profile"
            continue
        for other in set(PROFILES) - {named.group(1)}:
            assert f"{other} profile" not in outputs and f"runs/{other}" not in outputs, \
                f"{name} holds outputs of the {other} profile: restore it (git checkout) before committing"



def test_frontier_rows_and_verdict(tmp_path):
    import json

    from dambq.pipeline import stage_file
    for method, seed, top1 in (("lba", 0, 85.0), ("lba", 1, 85.4), ("random", 0, 84.0), ("random", 1, 84.3),
                               ("uniform", 0, 85.2), ("uniform", 1, 84.9)):
        name = stage_file("lba", 1.0, 2.0, method, seed)  # as benchmarks/allocation_frontier.py names them
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "stage": "lba", "finished": True, "targets": [1.0, 2.0], "seed": seed, "top1": top1, "weight_avg": 1.0,
            "act_avg": 2.0, "allocator": {} if method == "lba" else {"signal": method}}))
    rows = wb.frontier_rows(tmp_path)
    assert len(rows) == 6 and {r["method"] for r in rows} == {"lba", "random", "uniform"}
    verdict = wb.frontier_verdict(rows)
    assert any("random" in v and "beats it by more than the seed range" in v for v in verdict)
    assert any("uniform" in v and "within the seed range" in v for v in verdict)
    # one run each: +0.01 points was called "beats it by more than the seed range" (results/allocation-frontier.md)
    one = [{"target": "W1.0A2.0", "method": m, "top1": t} for m, t in (("lba", 82.84), ("uniform", 82.83))]
    assert wb.frontier_verdict(one) == ["W1.0A2.0: lba has no seed range to be judged against (one run) (uniform; "
                                        "mean difference +0.01 points, 1 vs 1 runs)"]


def test_published_rows_read_each_network_from_its_own_folder(tmp_path):
    # runs/quick holds ResNet20's chain and runs/quick-vgg VGG-small's (the README's --out): notebook 03's
    # table used to read runs/quick alone, so the VGG-small row showed "-" though this machine had its number
    import json

    def write(folder, stage, arch, top1, finished=True):
        folder.mkdir(exist_ok=True)
        (folder / f"{stage_file(stage, 2.0, 2.0)}.json").write_text(json.dumps(
            {"stage": stage, "arch": arch, "top1": top1, "profile": "quick", "epochs_done": 5, "finished": finished}))

    write(tmp_path / "quick", "w4a4", "resnet20", 86.44)     # first, yet not the VGG-small row's: another network
    write(tmp_path / "quick", "lba", "resnet20", 81.0, finished=False)  # a stopped stage is no result
    write(tmp_path / "quick-vgg", "w4a4", "vgg_small", 90.12)
    write(tmp_path / "quick-vgg", "lba", "resnet20", 84.0)
    ours = wb.published_rows(tmp_path / "quick")["ours"]
    assert ours[("ResNet20", "W4A4")] == "86.44 (quick profile, 5 epochs; quick)"
    assert ours[("VGG-small", "W4A4")] == "90.12 (quick profile, 5 epochs; quick-vgg)"
    assert ours[("ResNet20", "W2.0A2.0")] == "84.00 (quick profile, 5 epochs; quick-vgg)"
    assert ours[("ResNet20", "W1.0A2.0")] == "-"
    alone = wb.published_rows(tmp_path / "quick", siblings=False)["ours"]
    assert alone[("VGG-small", "W4A4")] == "-" and alone[("ResNet20", "W2.0A2.0")] == "-"


def test_published_rows_read_committed_reports_where_no_run_is_here(tmp_path):
    # runs folders stay out of git: on a fresh clone runs/quick-vgg was gone and the VGG-small row showed "-"
    # though results/quick-cpu-vgg.md, written from that run, was committed
    import json

    from dambq.report import write_report
    vgg = tmp_path / "elsewhere"  # not a sibling of quick: gone from this machine
    vgg.mkdir()
    common = dict(description="-", arch="vgg_small", profile="quick", data="CIFAR-10", device="CPU",
                  precision="bf16 autocast", minutes=1.0, weight_avg=4.0, act_avg=4.0)
    (vgg / "w4a4.json").write_text(json.dumps({**common, "stage": "w4a4", "file": "w4a4", "epochs": 5,
                                               "epochs_done": 5, "top1": 90.22, "finished": True}))
    (vgg / "lba-W1.0A2.0.json").write_text(json.dumps({**common, "stage": "lba", "file": "lba-W1.0A2.0",
                                                       "epochs": 5, "epochs_done": 2, "top1": 70.0,
                                                       "finished": False}))
    report = tmp_path / "quick-cpu-vgg.md"
    write_report(vgg, report, "python -m dambq.pipeline --report quick-cpu-vgg.md")
    assert "2 of 5 (stopped)" in report.read_text()
    ours = wb.published_rows(tmp_path / "quick", reports=(report,))["ours"]
    assert ours[("VGG-small", "W4A4")] == f"90.22 (quick profile, 5 epochs; {report})"
    assert ours[("VGG-small", "W1.0A2.0")] == "-"  # a stopped stage is no result, in a report too
    assert ours[("ResNet20", "W4A4")] == "-"
    (tmp_path / "not-a-report.md").write_text("# Notes\n")
    with pytest.raises(ValueError, match="not a report"):
        wb.published_rows(tmp_path / "quick", reports=(tmp_path / "not-a-report.md",))


def test_the_reports_notebook_03_reads_exist_and_read_back():
    # notebook 03 reads these where no runs folder here has the stage: a report format change must not break them
    import ast

    from dambq.report import read_report
    source = (wb.REPO_ROOT / "notebooks" / "03_channelwise_allocation.py").read_text()
    line = next(x for x in source.splitlines() if x.startswith("reports = "))
    reports = ast.literal_eval(line.split("=", 1)[1].split("#")[0].strip())
    assert reports
    for report in reports:
        folder, rows = read_report(wb.REPO_ROOT / report)
        assert folder.startswith("runs/") and rows and all(0 < r["top1"] <= 100 for r in rows)


def test_frontier_rows_keep_the_reports_runs_from_other_parents(tmp_path):
    # runs folders stay out of git: on a fresh clone the frontier's earlier runs lived only in its report, and the
    # notebook drew nothing ("no frontier runs"); a report from before the parent column names its header's device
    import json

    from dambq.report import frontier_run_lines, parent_label
    runs = tmp_path / "quick"
    runs.mkdir()
    (runs / "w4a4.json").write_text(json.dumps({"stage": "w4a4", "device": "CPU (Intel)", "top1": 86.19}))
    (runs / "lba.json").write_text(json.dumps({"stage": "lba", "finished": True, "targets": [2.0, 2.0], "seed": 0,
                                               "top1": 84.9, "weight_avg": 2.0, "act_avg": 2.0}))
    here = parent_label({"device": "CPU (Intel)", "top1": 86.19})
    run = dict(target="W2.0A2.0", method="lba", seed=0, top1=84.9, weight_avg=2.0, act_avg=2.0,
               epochs_done=get_profile("quick").lba.epochs, file="lba")
    report = tmp_path / "frontier.md"
    report.write_text("\n".join(["# Allocation frontier", "", "Profile `quick` (...); device CPU (AMD).", ""]
                                + frontier_run_lines([{**run, "parent": here},
                                                      {**run, "parent": "CPU (AMD); W4A4 86.44", "top1": 84.56},
                                                      {**run, "parent": "CPU (AMD); W4A4 86.44", "top1": 84.0,
                                                       "method": "uniform"}])) + "\n")
    rows = wb.frontier_rows(runs, report=report, profile="quick")
    assert sorted((r["parent"], r["method"], r["top1"]) for r in rows) == [
        ("CPU (AMD); W4A4 86.44", "lba", 84.56), ("CPU (AMD); W4A4 86.44", "uniform", 84.0), (here, "lba", 84.9)]
    assert [r["parent"] for r in wb.frontier_rows(runs)] == [here]  # no report: this folder only
    # runs of this very parent that only the report holds (an earlier session's folder is gone) are drawn too, and
    # a run the report names by an older parent label ("W4A4 not recorded") but this folder holds is drawn once
    report.write_text(report.read_text() + "\n".join(frontier_run_lines([
        {**run, "parent": here, "method": "random", "top1": 83.0},
        {**run, "parent": "CPU (Intel); W4A4 not recorded"}])[2:]) + "\n")
    rows = wb.frontier_rows(runs, report=report, profile="quick")
    assert sorted((r["parent"], r["method"], r["top1"]) for r in rows) == [
        ("CPU (AMD); W4A4 86.44", "lba", 84.56), ("CPU (AMD); W4A4 86.44", "uniform", 84.0), (here, "lba", 84.9),
        (here, "random", 83.0)]
    report.write_text("\n".join(report.read_text().splitlines()[:-2]) + "\n")
    assert len(wb.frontier_rows(runs, report=report, profile="smoke")) == 1  # a smoke notebook draws no quick runs
    assert len(wb.frontier_rows(tmp_path / "gone", report=report)) == 3  # a fresh clone: all the report's runs
    old = report.read_text().replace(" parent |", "").replace("---|---|---|---|---|---|---|---|---|",
                                                             "---|---|---|---|---|---|---|---|")
    old = "\n".join(line.replace(f" {here} |", "").replace(" CPU (AMD); W4A4 86.44 |", "")
                    for line in old.splitlines())
    report.write_text(old + "\n")
    assert {r["parent"] for r in wb.frontier_rows(tmp_path / "gone", report=report)} == {
        "CPU (AMD); W4A4 not recorded"}


def test_frontier_rows_leave_out_runs_of_another_lba_schedule(tmp_path):
    # the quick profile's LBA stage went from 10 to 15 epochs; notebook 03 then drew its 15-epoch LBA run beside the
    # report's 10-epoch rivals and called LBA the winner by more than the seed range: longer training, credited
    # to the allocation. Runs of another length (or profile) are left out, with a warning that says so.
    import json

    from dambq.report import frontier_run_lines
    epochs = get_profile("quick").lba.epochs
    runs = tmp_path / "quick"
    runs.mkdir()
    (runs / "w4a4.json").write_text(json.dumps({"stage": "w4a4", "device": "CPU", "top1": 86.5}))
    (runs / "lba.json").write_text(json.dumps({"stage": "lba", "finished": True, "targets": [2.0, 2.0], "seed": 0,
                                               "top1": 85.7, "weight_avg": 2.0, "act_avg": 2.0, "profile": "quick",
                                               "epochs_done": epochs}))
    run = dict(target="W2.0A2.0", method="uniform", seed=0, parent="CPU (AMD); W4A4 86.44", top1=84.2,
               weight_avg=2.0, act_avg=2.0, epochs_done=epochs - 5, file="lba-W2.0A2.0-uniform-s0")
    report = tmp_path / "frontier.md"
    report.write_text("\n".join(["# Allocation frontier", "", "Profile `quick` (...); device CPU (AMD).", ""]
                                + frontier_run_lines([run, {**run, "method": "lba", "top1": 84.6, "file": "lba"},
                                                      {**run, "method": "random", "epochs_done": epochs}])) + "\n")
    with pytest.warns(UserWarning, match=f"2 runs of .*frontier.md left out: .*{epochs - 5} LBA epochs"):
        rows = wb.frontier_rows(runs, report=report, profile="quick")
    assert sorted((r["method"], r["top1"]) for r in rows) == [("lba", 85.7), ("random", 84.2)]
    # this folder's own runs of an older schedule are left out too
    (runs / "lba.json").write_text(json.dumps({**json.loads((runs / "lba.json").read_text()), "epochs_done": epochs - 5}))
    with pytest.warns(UserWarning, match=f"1 run of {runs} left out"):
        rows = wb.frontier_rows(runs, profile="quick")
    assert rows == []


def test_command_line_paths_inside_the_repository_reach_the_notebooks_relative(tmp_path, monkeypatch):
    # `python -m dambq.workbook --runs-dir runs/quick-e15 --commit-outputs` committed notebooks whose outputs named
    # the machine's checkout ("runs in <its absolute path>/runs/quick-e15/"): the notebooks run from the repository root,
    # so a path inside it is handed over relative to it; a path outside stays absolute
    monkeypatch.chdir(wb.REPO_ROOT / "notebooks")
    assert wb.notebook_path("../runs/quick-e15") == "runs/quick-e15"
    assert wb.notebook_path(str(wb.REPO_ROOT / "figures")) == "figures"
    assert wb.notebook_path(str(tmp_path / "runs")) == str(tmp_path / "runs")


@pytest.mark.parametrize("path", sorted((wb.REPO_ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_name_no_path_of_the_machine_that_ran_them(path):
    # checked where the outputs were made: a clone elsewhere has another root, and the kernel's temporary files
    # (a warning's "/tmp/ipykernel_123/456.py:1:") are another machine-specific path
    text = path.read_text()
    assert str(wb.REPO_ROOT) not in text
    assert "/ipykernel_" not in text


def test_notebook_warnings_show_without_the_kernels_temporary_file(monkeypatch, tmp_path):
    import warnings
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    monkeypatch.chdir(tmp_path)
    wb.setup("smoke", runs_dir=tmp_path / "runs", figures_dir=tmp_path / "figures", device="cpu")
    shown = warnings.formatwarning("24 runs left out", UserWarning, "/tmp/ipykernel_1/2.py", 1)
    assert shown == "UserWarning: 24 runs left out\n"
