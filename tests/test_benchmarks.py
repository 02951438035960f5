"""The benchmark scripts run end to end on a tiny synthetic set (their numbers are not checked).

Why: the GPU check is one prepared script run on a lent machine with minutes of
budget; a crash there wastes the loan, so CI runs the same script on CPU first."""
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from dambq.profiles import get_profile
from dambq.train import default_amp, precision_label

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_time_script_writes_its_table(tmp_path):
    out = tmp_path / "epoch.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "epoch_time.py"), "--device", "cpu",
                    "--source", "synthetic", "--train-limit", "128", "--batch", "32", "--epochs", "2",
                    "--out", str(out)], check=True, cwd=tmp_path, capture_output=True, text=True)
    text = out.read_text()
    precision = precision_label(default_amp(torch.device("cpu")))  # fit's default on this CPU
    for row in (f"| float | {precision} | eager |", f"| W4A4 | {precision} | eager |",
                f"| W4A4 + allocation (ends at W3.00A3.00) | {precision} | eager |"):
        assert row in text, text
    assert "eager: quantized / float epoch time" in text and "synthetic" in text


@pytest.mark.slow
def test_gpu_lease_dry_run_runs_every_step_and_packs_the_results(tmp_path):
    """The lease script on CPU, as CI's rehearsal of the GPU run: every step exits 0, the
    paper-profile stand-in (smoke) reaches its end, and the bundle holds what must come back."""
    bundle = tmp_path / "lease.tar.gz"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_lease.py"), "--dry-run", "--minutes", "4",
                    "--work", str(tmp_path / "work"), "--skip", "notebooks-smoke", "--bundle", str(bundle)],
                   check=True, cwd=tmp_path, capture_output=True, text=True)
    text = (tmp_path / "work" / "gpu.md").read_text()
    for step in ("cuda-tests", "step-profile", "epoch-time", "paper-profile"):
        assert f"| {step} | 0 |" in text, text
    assert "| notebooks-smoke | skipped (--skip) |" in text
    assert "| lba | 3 / 3 |" in text and "| W4A4 + allocation" in text
    assert "| W4A4 + tracking | eager |" in text  # the step profile's table made it in
    assert "--no-progress --compile off`" in text  # the paper step took the profiled (only) mode, eager
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert "results/gpu.md" in names and "checkpoints/paper/lba.pt" in names and "lease-logs/paper-profile.log" in names
    assert "lease-logs/step-profile.md" in names


def test_clip_init_script_writes_its_table(tmp_path):
    from dambq.models import build_model
    from dambq.train import save_checkpoint
    checkpoint = tmp_path / "float.pt"
    save_checkpoint(checkpoint, {"model": build_model("resnet20").state_dict(), "meta": {"arch": "resnet20"}})
    out = tmp_path / "clip.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "clip_init.py"), "--checkpoint", str(checkpoint),
                    "--source", "synthetic", "--test-limit", "64", "--bits", "2", "--out", str(out)],
                   check=True, cwd=tmp_path, capture_output=True, text=True)
    text = out.read_text()
    assert "| 2 | 3.0 (spec) | " in text and "| 2 | MSE-calibrated | " in text and "synthetic" in text


@pytest.mark.slow
def test_allocation_frontier_dry_run_writes_every_method_and_seed(tmp_path):
    report = tmp_path / "frontier.md"
    # an earlier session's report, from before the parent column, on a clone whose runs folder is gone: its run is
    # kept beside the new parent's (they used to be dropped when the report was rewritten), and not trained again
    # (a fresh clone used to repeat every run the last machine had finished)
    report.write_text("# Allocation frontier\n\nProfile `smoke` (...); device CPU (elsewhere).\n\n"
                      "| target | method | seed | top-1 (%) | W avg | A avg | epochs | file |\n"
                      "|---|---|---|---|---|---|---|---|\n"
                      f"| W2.0A2.0 | lba | 0 | 0.01 | 2.000 | 2.000 | {get_profile('smoke').lba.epochs} | lba |\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allocation_frontier.py"), "--profile", "smoke",
                           "--out", str(tmp_path / "runs"), "--device", "cpu", "--seeds", "2", "--targets", "2,2",
                           "--report", str(report), "--figure", str(tmp_path / "frontier.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000  # the report's figure, from the same runs
    text = report.read_text()
    assert ": 7 of 7. Kept from earlier sessions (their runs folders are not here): 1 runs." in text
    assert "not trained again (a kept parent has them; --repeat to train them here): 1 runs" in done.stdout
    assert "| W2.0A2.0 | lba | 0 | CPU (elsewhere); W4A4 not recorded | 0.01 |" in text
    assert re.search(r"\| W2\.0A2\.0 \| lba \| [\d.]+ \| 0\.01 - [\d.]+ \| 2 \| 2 \|", text)
    for method in ("lba", "fisher", "random", "uniform"):
        assert f"| W2.0A2.0 | {method} |" in text
    files = sorted(p.name for p in (tmp_path / "runs").glob("lba*.json"))
    assert files == sorted(["lba-s1.json"] + [f"lba-{m}-W2.0A2.0{s}.json" for m in
                                                                  ("fisher", "random", "uniform") for s in ("", "-s1")])
    uniform = [line for line in text.splitlines() if line.startswith("| W2.0A2.0 | uniform | 0 |")]
    assert uniform and "| 2.000 | 2.000 |" in uniform[0]  # every channel at the target
    for method in ("fisher", "random", "uniform"):  # the verdict, rival by rival
        assert any(line.startswith("- W2.0A2.0: lba ") and f"({method};" in line for line in text.splitlines())
    again = subprocess.run(done.args + ["--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert report.read_text() == text  # rewritten from the finished runs alone, the kept run kept
    # a later session whose parent has the same label (same kind of CPU, same W4A4 top-1) but not this run's files:
    # the run is kept from the report, not trained again (it used to be dropped from the report and retrained)
    random_s1 = next(line for line in text.splitlines() if line.startswith("| W2.0A2.0 | random | 1 |"))
    for path in (tmp_path / "runs").glob("lba-random-W2.0A2.0-s1.*"):
        path.unlink()
    third = subprocess.run(done.args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "kept from" in third.stdout and "(1 of this same parent" in third.stdout, third.stdout
    assert not (tmp_path / "runs" / "lba-random-W2.0A2.0-s1.json").exists()
    text = report.read_text()
    assert random_s1 in text and ": 6 of 6. Kept from earlier sessions" in text and "1 of them from this same parent" in text
    # a report whose runs trained LBA for another number of epochs (the quick profile went from 10 to 15) is refused,
    # untouched: runs of today's schedule beside them would credit the longer training to the allocation
    epochs = get_profile("smoke").lba.epochs
    stale_text = text.replace(f" | {epochs} | lba", f" | {epochs + 1} | lba")
    assert stale_text != text
    stale = tmp_path / "stale.md"
    stale.write_text(stale_text)
    refused = subprocess.run([str(stale) if a == str(report) else a for a in done.args], cwd=ROOT, capture_output=True,
                             text=True, timeout=900)
    assert refused.returncode != 0 and "LBA epochs, not the smoke profile's" in refused.stderr, refused.stderr[-3000:]
    assert stale.read_text() == stale_text


@pytest.mark.slow
def test_export_sizes_script_writes_its_table(tmp_path):
    out = tmp_path / "export.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "export_sizes.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for row in ("every channel at W4A4", "every channel at W2A2", "every channel at W1A2"):
        assert row in text


def test_precision_parity_trains_both_engines_per_seed_and_reads_finished_runs_back(tmp_path, monkeypatch):
    """benchmarks/precision_parity.py under the smoke profile (compilation off, to keep it short):
    a row per engine and seed, the two engines' precisions as asked, and a rerun trains nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import precision_parity

    from dambq import train
    from dambq.pipeline import run_stage
    monkeypatch.setattr(train, "default_compile", lambda device, quantized=True, steps=None: False)
    monkeypatch.setattr(train, "fast_bfloat16", lambda device: True)  # the defaults differ from fp32 eager
    run_stage("float", "smoke", tmp_path / "float", progress=False)
    report = tmp_path / "parity.md"
    argv = ["--profile", "smoke", "--float", str(tmp_path / "float" / "float.pt"), "--out", str(tmp_path / "p"),
            "--seeds", "0,1", "--report", str(report), "--device", "cpu"]
    precision_parity.main(argv)
    text = report.read_text()
    assert text.count("| defaults |") == 2 and text.count("| fp32 eager |") == 2, text
    assert "| defaults | 0 | bf16 autocast |" in text and "| fp32 eager | 1 | fp32 |" in text
    stamp = (tmp_path / "p" / "fp32-eager-s1" / "w4a4.pt").stat().st_mtime
    precision_parity.main(argv)
    assert (tmp_path / "p" / "fp32-eager-s1" / "w4a4.pt").stat().st_mtime == stamp  # read back, not retrained
    with pytest.raises(SystemExit, match="no float checkpoint"):
        precision_parity.main(["--profile", "smoke", "--float", str(tmp_path / "missing.pt")])


def _tiny_silu_net() -> torch.nn.Module:
    """Three quantizable inputs (conv, conv, linear), negative values after SiLU."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()


def test_calibration_spread_measures_each_range_kind_it_names():
    """Each draw is measured with ranges per channel and with one range per layer, and the row
    says how many inputs hold a range per channel in each copy (so a per-layer column that had
    picked up per-channel ranges would show it)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from calibration_spread import PER_LAYER, _measure
    model = _tiny_silu_net()
    images = torch.randn(96, 3, 12, 12)
    sets = {"test_x": images[:32], "train_x": images[32:], "calibration_large": images[32:64]}
    with torch.no_grad():
        rows = _measure("tiny", model, sets, seeds=1, sizes=(16,), top=2)
    assert [r["calibration seed"] for r in rows] == ["zoo", 1]
    assert len(rows[0]["attribution"]["alone"]) == 2 and "attribution" not in rows[1]  # the zoo set only
    for r in rows:
        assert r["inputs with ranges per channel"] == "3 of 3"
        assert r["inputs with ranges per channel, per-layer copy"] == "0 of 3"
        assert r[PER_LAYER] != r["A8 error"] and r[PER_LAYER] > 0


def _calibrated_silu_net() -> tuple[torch.Tensor, torch.nn.Module, torch.Tensor]:
    """(float outputs, an A8 copy calibrated on half the images, the images) of `_tiny_silu_net`."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from model_zoo import quantized_copy
    model = _tiny_silu_net()
    images = torch.randn(64, 3, 12, 12)
    with torch.no_grad():
        return model(images), quantized_copy(model, images[:32], weight_bits=None, act_bits=8, keep_8bit=None), images


def test_calibration_spread_attribution_names_the_inputs_that_err_and_restores_the_model():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from calibration_spread import attribute
    from model_zoo import relative_error
    reference, q, images = _calibrated_silu_net()
    with torch.no_grad():
        before = relative_error(reference, q, images)
        result = attribute(q, reference, images, top=2)
        assert relative_error(reference, q, images) == before  # every quantizer put back
    errors = [e for e, _, _ in result["alone"]]
    assert len(errors) == 2 and errors == sorted(errors, reverse=True) and errors[0] > 0
    assert {name for _, name, _ in result["alone"]} <= {"0", "2", "5"}
    assert result["without top"] < before


def test_training_marks_give_what_separate_shorter_runs_give():
    """One run measured at several step counts (calibration_spread --cifar-steps 300,2000) sees at each
    mark the very weights and calibration images a separate run of that many steps ends with."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from model_zoo import train_cifar, train_cifar_marks

    from dambq.data import make_synthetic
    data = make_synthetic(num_train=192, num_test=32)
    marked = {mark: ({k: v.clone() for k, v in model.state_dict().items()}, sets["calibration_large"].clone())
              for mark, model, sets in train_cifar_marks("tiny_vit", data, (1, 3))}
    assert sorted(marked) == [1, 3]
    for steps in (1, 3):
        model, sets = train_cifar("tiny_vit", data, steps)
        weights, calibration = marked[steps]
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
        assert torch.equal(calibration, sets["calibration_large"])
    assert not torch.equal(marked[1][0]["head.weight"], marked[3][0]["head.weight"])
    with pytest.raises(ValueError, match="ascending"):
        next(train_cifar_marks("tiny_vit", data, (3, 1)))


def test_uniform_noise_stands_in_for_rounding_and_the_quantizers_come_back():
    """noise_error perturbs every quantized input by up to half a step (ReLU zeros of an unsigned input
    untouched), errs by about as much as the rounding it replaces, and leaves the model as it was."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from calibration_spread import _UniformNoise, noise_error
    from model_zoo import relative_error

    from dambq.quantizers import UniformAct
    reference, q, images = _calibrated_silu_net()
    with torch.no_grad():
        rounded = relative_error(reference, q, images)
        noisy = noise_error(q, reference, images)
        assert relative_error(reference, q, images) == rounded  # every quantizer put back
    assert 0 < noisy and 0.5 < noisy / rounded < 2  # uniform noise of a step errs like rounding does
    unsigned = UniformAct(1, bits=2)
    unsigned.act_clip.data.fill_(3.0)  # step 1
    x = torch.tensor([0.0, 0.4, 2.0, 2.9])
    y = _UniformNoise(unsigned, torch.Generator().manual_seed(0))(x)
    assert y[0] == 0 and ((y - x).abs() <= 0.5).all() and (y != x)[1:].all()


def test_step_speed_report_names_fits_defaults_for_float_and_quantized(tmp_path, monkeypatch):
    # the sentence naming fit's defaults lost its words: two string literals without a `+` made the first one the
    # separator of the join ("float bf16 autocast, eager`fit`'s defaults on this device ...: ; quantized ...")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import step_speed

    monkeypatch.setattr(step_speed, "make_step", lambda *args, **kwargs: (lambda: 0.01))  # no training: the report only
    out = tmp_path / "speed.md"
    monkeypatch.setattr(sys, "argv", ["step_speed.py", "--steps", "2", "--out", str(out)])
    step_speed.main()
    line = next(x for x in out.read_text().splitlines() if "defaults on this device" in x)
    steps = step_speed.quick_lba_steps()  # the quick LBA stage's length, which the profile decides
    assert re.fullmatch(rf"`fit`'s defaults on this device for a stage of {steps} steps \(`dambq\.train\.engine_settings`\): "
                        r"float [^;`]+, "
                        r"(eager|compiled); quantized [^;`]+, (eager|compiled)\.", line), line


def test_a_failing_engine_mode_is_a_row_not_the_end_of_the_lease_benchmarks(tmp_path, monkeypatch):
    # on a lease, a mode that fails (a CUDA-graph capture that meets a host sync, a compiler error)
    # must leave the other modes' rows, and the paper profile must not pick it
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import epoch_time
    import gpu_lease
    import step_profile

    def make_step(quantized, amp, compile, *args, compile_mode=None, **kwargs):
        if compile:
            raise RuntimeError("operation not permitted when stream is capturing")
        return lambda: 0.01
    monkeypatch.setattr(step_profile, "make_step", make_step)
    monkeypatch.setattr(step_profile, "CUDA_ONLY", ())
    monkeypatch.setattr(step_profile, "profile_steps", lambda step, steps, device: {
        "wall_ms": 10.0, "ops": 100.0, "kernels": None, "kernel_ms": None, "top": []})
    out, rows = tmp_path / "profile.md", tmp_path / "profile.json"
    monkeypatch.setattr(sys, "argv", ["step_profile.py", "--modes", "cuda-graphs,eager", "--out", str(out),
                                      "--json", str(rows)])
    step_profile.main()
    text = out.read_text()
    assert "| W4A4 + tracking | cuda-graphs | failed: RuntimeError: operation not permitted" in text, text
    assert "| W4A4 + tracking | eager | 10.00 |" in text
    assert gpu_lease.fastest_engine(rows) == ["--compile", "off"]

    def time_epochs(name, model, data, cfg, device, allocate, compile, mode=None):
        if compile:
            raise RuntimeError("capture failed")
        return {"name": name, "first": 1.0, "epoch": 1.0, "images_per_s": 100.0, "top1": 10.0,
                "precision": "fp32", "compiled": "eager"}
    monkeypatch.setattr(epoch_time, "time_epochs", time_epochs)
    out = tmp_path / "epoch.md"
    monkeypatch.setattr(sys, "argv", ["epoch_time.py", "--device", "cpu", "--source", "synthetic", "--train-limit",
                                      "64", "--compile", "both", "--compile-modes", "cuda-graphs", "--out", str(out)])
    epoch_time.main()
    text = out.read_text()
    assert "| W4A4 + allocation | - | cuda-graphs | failed: RuntimeError: capture failed |" in text, text
    assert "eager: quantized / float epoch time" in text and "cuda-graphs: quantized" not in text


class _Cube(torch.nn.Module):
    def forward(self, x):
        return x ** 3


def test_noise_amplification_is_the_relative_output_error_per_relative_input_noise():
    """An identity network passes input noise on as it is (1x); x**3 on inputs of size 1 triples it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from model_zoo import noise_amplification
    signs = torch.randint(0, 2, (32, 3, 8, 8)).float() * 2 - 1
    for model, expected in ((torch.nn.Identity(), 1.0), (_Cube(), 3.0)):
        with torch.no_grad():
            assert noise_amplification(model, model(signs), signs) == pytest.approx(expected, rel=0.02)


def test_oracle_ranges_beat_a_calibration_that_saw_too_little():
    """The oracle calibrates on the very images it is measured on: far better than ranges from
    images of half the spread, which clip."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from model_zoo import oracle_a8_error, quantized_copy, relative_error
    model = _tiny_silu_net()
    images = torch.randn(32, 3, 12, 12)
    with torch.no_grad():
        reference = model(images)
        narrow = quantized_copy(model, images * 0.5, weight_bits=None, act_bits=8, keep_8bit=None,
                                act_range="channel")
        oracle = oracle_a8_error(model, reference, images)
        assert 0 < oracle < 0.5 * relative_error(reference, narrow, images)


def test_quantizer_kernel_benchmark_times_every_row_and_writes_its_report(tmp_path):
    """benchmarks/quantizer_kernel.py, eager rows only (compiling is for the real run): every pass
    and layout timed, the report relative to the eager ReLU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quantizer_kernel
    out = tmp_path / "kernel.md"
    rows = quantizer_kernel.main(["--batch", "2", "--rounds", "2", "--no-compile", "--out", str(out)])
    assert {(r["pass"], r["layout"]) for r in rows} == {(p, l) for p in ("relu", *quantizer_kernel.KINDS)
                                                         for l in quantizer_kernel.LAYOUTS}
    assert "formulas, fusible + tracking" in quantizer_kernel.KINDS
    assert all(r["ms"] > 0 and not r["compiled"] for r in rows)
    assert "| relu | no | channels_last |" in out.read_text()


def test_lba_schedule_runs_each_setting_from_one_parent_and_reads_finished_ones_back(tmp_path):
    """benchmarks/lba_schedule.py under the smoke profile: one LBA stage per (lr, window), each
    from a copy of the same W4A4 parent, tabulated against the float; a rerun trains nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lba_schedule

    from dambq.pipeline import run_stage
    parent = tmp_path / "parent"
    for stage in ("float", "w4a4"):
        run_stage(stage, "smoke", parent, progress=False)
    argv = ["--parent", str(parent), "--profile", "smoke", "--settings", "0.01:0,1", "0.02:0,0", "--compile", "off",
            "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "schedule.md")]
    rows = lba_schedule.main(argv)
    assert [(r["lr"], r["window"]) for r in rows] == [(0.01, (0, 1)), (0.02, (0, 0))]
    assert all(r["weight_avg"] <= 2.0 and r["act_avg"] <= 2.0 and len(r["curve"]) == 3 for r in rows)
    text = (tmp_path / "schedule.md").read_text()
    assert "| 0.01 | 1-2 |" in text and "| 0.02 | 1-1 |" in text and "final - float" in text
    stamp = (tmp_path / "runs" / "lr0.01-w0-1" / "lba.pt").stat().st_mtime
    lba_schedule.main(argv)
    assert (tmp_path / "runs" / "lr0.01-w0-1" / "lba.pt").stat().st_mtime == stamp  # read back, not retrained
    with pytest.raises(SystemExit, match="w4a4.pt not found"):
        lba_schedule.main(argv[:1] + [str(tmp_path / "nowhere")] + argv[2:])
    # --seeds repeats a setting with another seed in a folder of its own and adds the mean
    seeded = lba_schedule.main(argv[:5] + ["0.02:0,0", "--seeds", "0", "1"] + argv[7:])
    assert [(r["lr"], r["seed"]) for r in seeded] == [(0.02, 0), (0.02, 1)]
    assert (tmp_path / "runs" / "lr0.02-w0-0-s1" / "lba-s1.pt").exists()
    assert seeded[0]["top1"] == rows[1]["top1"]  # seed 0 read back from the run above
    text = (tmp_path / "schedule.md").read_text()
    mean = (seeded[0]["top1"] + seeded[1]["top1"]) / 2
    assert "Mean over seeds" in text and f"| 0.02 | 1-1 | 2 | {mean:.2f} |" in text and "--seeds 0 1" in text
    # any stage that starts from W4A4 (or float): LBA with distillation copies the float teacher in too
    # and for other than the profile's epochs (smoke LBA: 3), in a folder named by them
    kd = lba_schedule.main(["--stage", "lba_kd"] + argv[:5] + ["0.02:0,0", "--compile", "off", "--epochs", "2",
                            "--root", str(tmp_path / "kd"), "--out", str(tmp_path / "kd.md")])
    assert kd[0]["weight_avg"] <= 2.0 and len(kd[0]["curve"]) == 2
    assert (tmp_path / "kd" / "lr0.02-w0-0-e2" / "lba_kd.pt").exists()
    assert "--stage lba_kd" in (tmp_path / "kd.md").read_text() and "--epochs 2" in (tmp_path / "kd.md").read_text()
