"""Experiments from the command line: recipes as data, every setting a flag and recorded,
an evaluation-only command, and the best epoch beside the final one."""
import json

import pytest
import torch

import dambq
from dambq.data import make_synthetic
from dambq.models import build_model
from dambq.pipeline import evaluate_checkpoint, main, stage_quantization
from dambq.profiles import RECIPES, get_profile, with_schedule
from dambq.train import save_checkpoint


def test_recipes_choose_the_codebook_and_the_ramps():
    assert stage_quantization("w4a4", get_profile("smoke"))["codebook"] == "lookup"
    assert stage_quantization("w4a4", get_profile("smoke", recipe="v1"))["codebook"] == "v1"
    assert stage_quantization("w4a4", get_profile("smoke", recipe="v1", codebook="uniform"))["codebook"] == "uniform"
    assert stage_quantization("w4a4_uniform", get_profile("smoke", recipe="v1"))["codebook"] == "uniform"
    assert stage_quantization("float", get_profile("smoke")) is None
    with pytest.raises(ValueError, match="recipe"):
        get_profile("smoke", recipe="v3")
    model = dambq.convert(build_model("resnet20"))
    allocator = dambq.BitAllocator(model, 2.0, 2.0, window=(0, 10), **RECIPES["v1"].allocator_args())
    weights, acts = allocator.kinds
    assert allocator._ramp(weights, 10) == pytest.approx(0.4) and allocator._ramp(acts, 10) == pytest.approx(0.2)
    assert allocator._ramp(weights, 0) == pytest.approx(0.01)


def test_with_schedule_changes_every_stage():
    profile = with_schedule(get_profile("paper"), lr=0.1, epochs=7)
    assert {(c.lr, c.epochs) for c in (profile.float, profile.w4a4, profile.lba)} == {(0.1, 7)}
    assert profile.float.batch_size == 512


def test_every_setting_is_a_flag_and_recorded(tmp_path, capsys):
    main(["--profile", "smoke", "--stages", "float,w4a4,lba", "--out", str(tmp_path), "--device", "cpu",
          "--recipe", "v1", "--bits", "3,3", "--epochs", "2", "--lr", "0.02", "--batch-size", "32",
          "--window", "0,1", "--ramps", "0.5,0.25", "--weight-target", "2.5", "--act-target", "2.5",
          "--no-progress"])
    w4a4 = json.loads((tmp_path / "w4a4.json").read_text())
    assert w4a4["recipe"] == "v1" and w4a4["quantization"] == {
        "codebook": "v1", "weight_bits": 3, "act_bits": 3, "granularity": "channel"}
    assert w4a4["schedule"]["lr"] == 0.02 and w4a4["schedule"]["batch_size"] == 32 and w4a4["epochs"] == 2
    assert w4a4["weight_avg"] == 3.0 and 1 <= w4a4["best_epoch"] <= 2 and w4a4["best_top1"] >= w4a4["top1"] - 1e-9
    lba = json.loads((tmp_path / "lba-W2.5A2.5.json").read_text())
    assert lba["window"] == [0, 1] and lba["allocator"]["max_ratio"] == [0.5, 0.25]
    assert lba["weight_avg"] <= 2.5 and lba["act_avg"] <= 2.5
    capsys.readouterr()
    main(["--profile", "smoke", "--evaluate", str(tmp_path / "lba-W2.5A2.5.pt"), "--device", "cpu"])
    row = json.loads(capsys.readouterr().out)
    assert row["top1"] == pytest.approx(lba["top1"]) and row["weight_avg"] == pytest.approx(lba["weight_avg"])
    assert row["arch"] == "resnet20" and row["epochs_trained"] == 2


def test_lba_with_distillation_allocates_to_the_targets_and_learns_from_the_float(tmp_path, monkeypatch):
    """Stage lba_kd (an extension): LBA's allocation, its training loss from the float teacher (Distillation)."""
    from dambq import pipeline
    calls, forward = [], pipeline.Distillation.forward
    monkeypatch.setattr(pipeline.Distillation, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    for stage in ("float", "w4a4"):
        pipeline.run_stage(stage, "smoke", tmp_path, progress=False)
    assert not calls
    kd = pipeline.run_stage("lba_kd", "smoke", tmp_path, progress=False)
    assert kd["weight_avg"] <= 2.0 and kd["act_avg"] <= 2.0 and kd["teacher"] == "float"
    assert len(calls) >= kd["epochs_done"] == 3  # at least a step per epoch went through the teacher
    assert (tmp_path / "lba_kd.pt").exists() and not (tmp_path / "lba.pt").exists()


def test_report_with_stages_runs_them_first_and_report_alone_only_reports(tmp_path):
    # before: --report with --stages skipped the stages and failed on the empty folder
    report = tmp_path / "report.md"
    main(["--profile", "smoke", "--stages", "float", "--epochs", "1", "--out", str(tmp_path / "runs"),
          "--device", "cpu", "--no-progress", "--report", str(report)])
    assert (tmp_path / "runs" / "float.json").exists() and "| float |" in report.read_text()
    report.unlink()
    main(["--profile", "smoke", "--out", str(tmp_path / "runs"), "--report", str(report)])  # no training
    assert "| float |" in report.read_text()
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.json")) == ["float.json"]


def test_under_torchrun_only_rank_0_writes_the_report(tmp_path, monkeypatch):
    # before: the rank was read after the process group was gone, so every rank wrote the report
    import types
    from dambq import pipeline
    group = types.SimpleNamespace(up=True)
    monkeypatch.setattr(pipeline, "dist", types.SimpleNamespace(
        is_initialized=lambda: group.up, destroy_process_group=lambda: setattr(group, "up", False)))
    monkeypatch.setattr(pipeline, "world", lambda: (1, 2) if group.up else (0, 1))
    monkeypatch.setattr(pipeline, "load_data", lambda *args: None)
    monkeypatch.setattr(pipeline, "run_stage", lambda *args, **kwargs: {"model": None, "finished": True})
    main(["--profile", "smoke", "--stages", "float", "--out", str(tmp_path), "--report", str(tmp_path / "r.md")])
    assert not group.up and not (tmp_path / "r.md").exists()


def test_evaluate_refuses_a_checkpoint_that_does_not_say_how_it_was_made(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": build_model("resnet20").state_dict(), "epoch": 0, "meta": {"stage": "w4a4"}})
    with pytest.raises(ValueError, match="does not record"):
        evaluate_checkpoint(path, "smoke", data=make_synthetic(32, 32), device="cpu")
    float_path = tmp_path / "float.pt"
    torch.manual_seed(0)
    save_checkpoint(float_path, {"model": build_model("resnet20").state_dict(), "epoch": 4,
                                 "meta": {"stage": "float", "arch": "resnet20"}})
    row = evaluate_checkpoint(float_path, "smoke", data=make_synthetic(32, 32), device="cpu")
    assert row["epochs_trained"] == 5 and "weight_avg" not in row


def test_the_cpu_label_names_family_and_model(monkeypatch):
    # two virtual machines both reading "AMD EPYC, AVX512-BF16" trained 1.7x apart: their results need
    # labels that tell them apart
    from dambq import pipeline
    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\n"
               "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 9\nmodel name\t: other\n")
    monkeypatch.setattr(pipeline.Path, "read_text", lambda self, *a, **k: cpuinfo)
    assert pipeline.cpu_model().startswith("AMD EPYC (family 26, model 2), ")
