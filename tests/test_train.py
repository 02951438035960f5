"""Training engine: runs, resumes a killed run identically, refuses corrupt checkpoints."""
import json

import pytest
import torch

import dambq
from dambq.convert import act_clips
from dambq.data import make_synthetic
from dambq.models import build_model
from dambq.pipeline import run_stage
from dambq.report import write_report
from dambq.profiles import StageConfig, get_profile
from dambq.train import CheckpointError, evaluate, fit, load_checkpoint

CFG = StageConfig(epochs=2, lr=0.05, batch_size=64)


def small_data():
    data = make_synthetic()
    data.train_images, data.train_labels = data.train_images[:192], data.train_labels[:192]
    data.test_images, data.test_labels = data.test_images[:64], data.test_labels[:64]
    return data


def test_fit_records_metrics_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = dambq.convert(build_model("resnet20"))
    history = fit(model, small_data(), CFG, device="cpu", checkpoint=tmp_path / "c.pt",
                  metrics_csv=tmp_path / "m.csv", progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train_loss", "test_top1", "weight_avg", "act_avg", "seconds"} <= history[0].keys()
    assert (tmp_path / "m.csv").read_text().count("\n") == 3
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 1 and {"optimizer", "scheduler", "rng"} <= state.keys()


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    data = small_data()
    torch.manual_seed(0)
    full = build_model("resnet20")
    start = {k: v.clone() for k, v in full.state_dict().items()}
    fit(full, data, CFG, device="cpu", progress=False, seed=1)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(record):
        raise Killed

    first = build_model("resnet20")
    first.load_state_dict(start)
    with pytest.raises(Killed):
        fit(first, data, CFG, device="cpu", checkpoint=tmp_path / "c.pt", progress=False, seed=1,
            on_epoch_end=kill_after_first_epoch)
    resumed = build_model("resnet20")
    history = fit(resumed, data, CFG, device="cpu", checkpoint=tmp_path / "c.pt", progress=False, seed=1)
    assert [r["epoch"] for r in history] == [1, 2]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="left untouched"):
        fit(build_model("resnet20"), small_data(), CFG, device="cpu", checkpoint=path, progress=False)
    assert path.read_bytes() == b"not a checkpoint"


def test_eval_independent_of_batch_size():
    torch.manual_seed(0)
    data = small_data()
    model = dambq.convert(build_model("resnet20"))
    fit(model, data, StageConfig(epochs=1, lr=0.01, batch_size=64), device="cpu", progress=False)
    a = evaluate(model, data.test_images, data.test_labels, torch.device("cpu"), batch_size=64)
    b = evaluate(model, data.test_images, data.test_labels, torch.device("cpu"), batch_size=7)
    # float32 convs round differently per batch size and can flip a level (exact batch
    # independence is tested in float64 in test_convert.py): allow one sample of slack
    assert abs(a["top1"] - b["top1"]) <= 100 / 64 + 1e-9 and a["loss"] == pytest.approx(b["loss"], rel=2e-2)
    assert evaluate(model, data.test_images, data.test_labels, torch.device("cpu"), batch_size=64) == a


def test_pipeline_smoke_chain(tmp_path):
    profile = get_profile("smoke", train_limit=128, test_limit=64)
    data = small_data()
    for stage in ("float", "w4a4", "lba"):
        summary = run_stage(stage, profile, tmp_path, data=data, device="cpu", progress=False)
    assert summary["weight_avg"] <= 2.0 and summary["act_avg"] <= 2.0
    saved = json.loads((tmp_path / "lba.json").read_text())
    assert saved["profile"] == "smoke" and saved["data"] == "synthetic" and "CPU" in saved["device"]
    assert saved["act_clip_init"] == "mse"  # inherited from w4a4, which calibrated its clips
    assert json.loads((tmp_path / "float.json").read_text())["act_clip_init"] is None
    again = run_stage("lba", profile, tmp_path, data=data, device="cpu", progress=False)  # finished: read back
    assert again["top1"] == summary["top1"]
    report = write_report(tmp_path, tmp_path / "report.md", "cmd")
    assert report.count("| smoke | synthetic |") == 3 and "## Allocation per epoch" in report
    assert "bits lowered in epochs 1-3)" in report  # the smoke window (0, 2), counted from 1 as the rows are
    precision = dambq.train.precision_label(dambq.train.default_amp(torch.device("cpu")))  # this CPU's default
    assert report.count(f"| {precision} | mse |") == 2 and "| - |" in report
    assert "layer3.2.conv2" in report
    import csv
    import statistics
    from dambq.report import read_report
    seconds = [float(r["train_seconds"]) for r in csv.DictReader((tmp_path / "lba.csv").read_text().splitlines())]
    lba_row = next(line for line in report.splitlines() if line.startswith("| lba |"))
    assert lba_row.endswith(f"| {statistics.median(seconds[1:]):.1f} |")  # the first epoch compiles: left out
    assert [r["file"] for r in read_report(tmp_path / "report.md")[1]] == ["float", "w4a4", "lba"]
    older = json.loads((tmp_path / "float.json").read_text())
    del older["file"]  # as an older dambq wrote it
    (tmp_path / "float.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="float.json lacks file: written by an older dambq"):
        write_report(tmp_path, tmp_path / "report.md", "cmd")


def test_unknown_profile_and_stage():
    with pytest.raises(ValueError, match="profile"):
        get_profile("fast")
    with pytest.raises(ValueError, match="stage"):
        run_stage("w3a3")


def test_resumed_stage_decides_compilation_from_the_steps_left(tmp_path, monkeypatch):
    # without bf16 units a stage compiles only if it has COMPILE_PAYBACK_STEPS steps to run; a stage
    # resumed with one of its two epochs left has 3 of its 6 steps to go, too few to pay a compilation back
    from dambq import train
    monkeypatch.setattr(train, "fast_bfloat16", lambda device: False)
    monkeypatch.setattr(train, "COMPILE_PAYBACK_STEPS", 4)
    asked = []
    eager_step = train.step_function

    def spy(model, compile, mode=None):  # records the decision, runs eager (no 60 s compilation here)
        asked.append(compile)
        return eager_step(model, False, mode)
    monkeypatch.setattr(train, "step_function", spy)

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed
    with pytest.raises(Killed):
        fit(build_model("resnet20"), small_data(), CFG, device="cpu", checkpoint=tmp_path / "c.pt",
            progress=False, on_epoch_end=kill)
    history = fit(build_model("resnet20"), small_data(), CFG, device="cpu", checkpoint=tmp_path / "c.pt",
                  progress=False)
    assert asked == [True, False]  # 6 steps to run: compile; 3 left: eager
    assert [r["compiled"] for r in history] == [True, False]


def test_bf16_autocast_for_every_model_where_it_pays(monkeypatch):
    from dambq import train
    data, cfg = small_data(), StageConfig(epochs=1, lr=0.05, batch_size=64)
    monkeypatch.setattr(train, "fast_bfloat16", lambda device: True)
    assert fit(build_model("resnet20"), data, cfg, device="cpu", progress=False,
               compile=False)[0]["precision"] == "bf16 autocast"
    quantized = dambq.convert(build_model("resnet20"))
    record = fit(quantized, data, cfg, device="cpu", progress=False, compile=False)[0]
    assert record["precision"] == "bf16 autocast" and record["compiled"] is False
    assert train.engine_settings(torch.device("cpu"))["compile"]  # fast bf16 CPUs compile quantized models
    monkeypatch.setattr(train, "has_amx", lambda device: False)
    assert not train.engine_settings(torch.device("cpu"), quantized=False)["compile"]  # and leave float eager,
    monkeypatch.setattr(train, "has_amx", lambda device: True)
    assert train.engine_settings(torch.device("cpu"), quantized=False)["compile"]  # except with AMX
    monkeypatch.setattr(train, "fast_bfloat16", lambda device: False)
    assert fit(build_model("resnet20"), data, cfg, device="cpu", progress=False)[0]["precision"] == "fp32"
    assert train.engine_settings(torch.device("cpu")) == {"amp": False, "compile": False, "channels_last": True}
    # without bf16 units, models compile only for stages long enough to pay the compilation back
    long, short = train.COMPILE_PAYBACK_STEPS, train.COMPILE_PAYBACK_STEPS - 1
    for quantized in (True, False):
        assert train.engine_settings(torch.device("cpu"), quantized=quantized, steps=long)["compile"]
        assert not train.engine_settings(torch.device("cpu"), quantized=quantized, steps=short)["compile"]
    quantized = dambq.convert(build_model("resnet20"))
    assert fit(quantized, data, cfg, device="cpu", progress=False)[0]["compiled"] is False  # 3 steps: eager
    assert not train.engine_settings(torch.device("cuda"))["compile"]  # compiled epochs were slower on an H200
    assert not train.fast_bfloat16(torch.device("meta"))


def test_distillation_from_a_teacher_trains_and_pulls_towards_it(tmp_path):
    from dambq.train import Distillation
    data, cfg = small_data(), StageConfig(epochs=1, lr=0.05, batch_size=64)
    torch.manual_seed(0)
    teacher = build_model("resnet20")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
    with torch.no_grad():
        same = teacher.eval()(x)
    only_kl = Distillation(teacher, weight=1.0)
    assert only_kl(same, x, y).abs() < 1e-5  # a student equal to its teacher: KL 0
    assert only_kl(torch.zeros_like(same), x, y) > 0
    student = dambq.convert(teacher)
    history = fit(student, data, cfg, device="cpu", progress=False, loss_fn=Distillation(teacher, 0.5))
    assert history[0]["precision"] == dambq.train.precision_label(dambq.train.default_amp(torch.device("cpu")))
    assert history[0]["train_loss"] > 0
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_spec_clip_start_is_used_and_recorded(tmp_path):
    profile = get_profile("smoke", train_limit=128, test_limit=64, act_clip_init=3.0,
                          w4a4=StageConfig(epochs=1, lr=0.0, batch_size=64))
    data = small_data()
    run_stage("float", profile, tmp_path, data=data, device="cpu", progress=False)
    summary = run_stage("w4a4", profile, tmp_path, data=data, device="cpu", progress=False)
    assert summary["act_clip_init"] == 3.0
    # learning rate 0 (and no warm-up): the clips are still where they started
    assert set(act_clips(summary["model"]).values()) == {3.0}


def test_read_back_does_not_recalibrate_and_keeps_the_setup_time(tmp_path, monkeypatch):
    from dambq import pipeline
    profile = get_profile("smoke", train_limit=128, test_limit=64)
    data = small_data()
    run_stage("float", profile, tmp_path, data=data, device="cpu", progress=False)
    first = run_stage("w4a4", profile, tmp_path, data=data, device="cpu", progress=False)
    assert first["setup_seconds"] > 0
    assert load_checkpoint(tmp_path / "w4a4.pt")["meta"]["setup_seconds"] == first["setup_seconds"]

    def no_calibration(*args, **kwargs):
        raise AssertionError("a finished stage must not calibrate again")
    monkeypatch.setattr(pipeline, "init_act_clips", no_calibration)
    again = run_stage("w4a4", profile, tmp_path, data=data, device="cpu", progress=False)
    assert again["top1"] == first["top1"] and again["setup_seconds"] == first["setup_seconds"]
    assert act_clips(again["model"]) == act_clips(first["model"])
