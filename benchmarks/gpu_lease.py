"""The GPU lease in one command: CUDA checks, epoch times, then the paper profile until time is up.

On the lent GPU machine (the working tree travels; ../shared does not, so the CIFAR-10
archive travels as data/cifar10-jpeg.tar.gz, git-ignored, named in `carry`):

    cp ../shared/data/cifar10-jpeg.tar.gz data/       # once, here, before the lease
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_lease.py --minutes 9 --skip notebooks-smoke --bundle $OUT/lease.tar.gz

On a CPU, as CI does, the same script runs every step in seconds:

    python benchmarks/gpu_lease.py --dry-run --bundle /tmp/lease.tar.gz

Steps, each given a share of the minutes left (by WEIGHTS, among the steps not skipped) and each
allowed to fail without stopping the rest:
  (a) the CUDA-marked tests (pytest -m cuda);
  (b) benchmarks/step_profile.py: operator calls, kernel launches and kernel time of a float and
      a W4A4 + tracking step, eager, the eager step as CUDA graphs (cuda-graphs, dambq.graphs),
      compiled, and compiled with inductor's CUDA graphs (reduce-overhead);
  (c) notebooks 01-04 under the smoke profile through papermill on the device (skipped, and said
      so, when papermill is missing: carry the wheels of benchmarks/device_wheels.sh);
  (d) benchmarks/epoch_time.py: float / W4A4 / W4A4 + allocation at batch 512, compiled in
      --compile-modes (and eager with --epoch-eager);
  (e) the paper profile (float -> W4A4 -> W2.0A2.0) into checkpoints/paper/ for whatever time
      is left, checkpointing every epoch (the next lease resumes where this one stopped), with the
      compile mode whose quantized step (b) timed fastest on this machine.
It writes results/gpu.md (device, torch version, every number's command) and, with --bundle,
packs results/gpu.md, the step logs and checkpoints/paper/ into one archive ($OUT returns at
most 8 files). Commit the checkpoints that come back (each must stay <= 5 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU machine runs its own python3, where dambq is not installed
CHECKPOINT_LIMIT_MB = 5.0
# a step's share of the minutes left is its weight over the weights of the steps still to run, so
# skipping one (--skip) gives its time to the others instead of leaving it unused
WEIGHTS = {"cuda-tests": 2.5, "step-profile": 3.5, "notebooks-smoke": 2.5, "epoch-time": 2.5,
           "paper-profile": 3.0}
# the first lease (results/gpu-lease-1.md) timed eager and default-compiled epochs and found the
# quantized step 5-7x float either way; the CUDA tests needed more than the 71 s they were given


def shown(text: str) -> str:
    """A command or log line as results/gpu.md shows it: no machine's paths (the interpreter is
    `python`, files are relative to the repository, the returned folder is $OUT)."""
    text = text.replace(sys.executable, "python").replace(str(ROOT) + os.sep, "")
    out = os.environ.get("OUT")
    return text.replace(out, "$OUT") if out else text


def run_step(name: str, command: list[str], seconds: float, log_dir: Path, env: dict) -> dict:
    """Run one step as a subprocess with a time limit; its output goes to <log_dir>/<name>.log."""
    log = log_dir / f"{name}.log"
    started = time.time()
    print(f"== {name} (limit {seconds:.0f} s): {shown(shlex.join(command))}", flush=True)
    with open(log, "w") as handle:
        # a process group of its own, so a timeout also ends what it started (papermill's kernels)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = "timeout"
    result = {"name": name, "command": shown(shlex.join(command)), "code": code,
              "seconds": time.time() - started, "log": log.name}
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"   -> {code} in {result['seconds']:.0f} s; " + " | ".join(tail), flush=True)
    return result


def fastest_engine(profile_json: Path) -> list[str]:
    """Pipeline flags for the compile mode whose W4A4 + tracking step the step profile timed
    fastest on this machine (none, i.e. fit's default, when there is no profile): the quantized
    stages are where the paper profile's minutes go."""
    if not profile_json.exists():
        return []
    rows = [r for r in json.loads(profile_json.read_text()) if r["model"] != "float" and "failed" not in r]
    if not rows:
        return []
    mode = min(rows, key=lambda r: r["wall_ms"])["mode"]
    print(f"   paper profile engine: {mode} (fastest W4A4 + tracking step in the step profile)", flush=True)
    return {"eager": ["--compile", "off"], "default": ["--compile", "on"]}.get(
        mode, ["--compile", "on", "--compile-mode", mode])


def has_module(name: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


def stage_lines(folder: Path) -> list[str]:
    """One table row per stage summary in `folder`: epochs reached and top-1."""
    rows = []
    summaries = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    order = ["float", "w4a4", "lba"]
    for s in sorted(summaries, key=lambda s: order.index(s["stage"]) if s["stage"] in order else len(order)):
        bits = f"W{s['weight_avg']:.3f}A{s['act_avg']:.3f}" if "weight_avg" in s else "float"
        rows.append(f"| {s['stage']} | {s.get('epochs_done', s['epochs'])} / {s['epochs']} | {s['top1']:.2f} | "
                    f"{bits} | {s['precision']}{', compiled' if s.get('compiled') else ''} | {s['minutes']:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="everything ends within this (8: the device's 10-minute command limit, less "
                             "room for a stage's first epoch overrunning and for packing)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, synthetic data, smoke profile, seconds: checks the script itself")
    parser.add_argument("--results", default=None, help="results file (default results/gpu.md; dry run: in --work)")
    parser.add_argument("--work", default=None, help="folder for step logs (default runs/lease)")
    parser.add_argument("--bundle", default=None, help="pack results, logs and checkpoints into this .tar.gz")
    parser.add_argument("--compile-modes", default="cuda-graphs,reduce-overhead",
                        help="engine modes of the epoch-time step: cuda-graphs (the eager step captured, "
                             "dambq.graphs; seconds), torch.compile modes such as reduce-overhead or default "
                             "(each adds three compilations); its eager rows come with --epoch-eager")
    parser.add_argument("--epoch-eager", action="store_true",
                        help="also time eager epochs (results/gpu-lease-1.md has eager and default-compiled ones)")
    parser.add_argument("--skip", default="", help="comma list of steps to leave out: " + ", ".join(WEIGHTS))
    args = parser.parse_args()
    started = time.time()
    end = started + 60 * args.minutes
    work = Path(args.work or ("runs/lease-dry" if args.dry_run else "runs/lease")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else (work / "gpu.md" if args.dry_run else ROOT / "results" / "gpu.md")
    checkpoints = work / "paper-dry" if args.dry_run else ROOT / "checkpoints" / "paper"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if (ROOT / "data").is_dir() and "DAMBQ_DATA" not in env:
        env["DAMBQ_DATA"] = str(ROOT / "data")  # the archive carried with the working tree
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    python = sys.executable
    device = "cpu" if args.dry_run else "cuda"

    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - set(WEIGHTS)
    if unknown:
        parser.error(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(WEIGHTS)}")
    steps = []

    def left(name: str | None = None) -> float:
        """Seconds for step `name`: its weighted share of what is left (all of it for None)."""
        if name is None:
            return end - time.time()
        to_run = [n for n in list(WEIGHTS)[list(WEIGHTS).index(name):] if n not in skip]
        return WEIGHTS[name] / sum(WEIGHTS[n] for n in to_run) * (end - time.time())

    def step(name: str, command: list[str], seconds: float) -> None:
        if name in skip:
            steps.append({"name": name, "command": shown(shlex.join(command)), "code": "skipped (--skip)",
                          "seconds": 0.0, "log": "-"})
        else:
            steps.append(run_step(name, command, seconds, work, env))

    # (a) CUDA tests (-v: one line per finished test, so a step cut off by its limit still says which passed)
    step("cuda-tests", [python, "-m", "pytest", "-v", "-m", "cuda", "tests/test_cuda.py"], left("cuda-tests"))
    # where the step's time goes: operator calls, kernel launches and kernel time per step
    profile_md = work / "step-profile.md"
    profile_json = work / "step-profile.json"
    profile_json.unlink(missing_ok=True)
    profile = [python, "benchmarks/step_profile.py", "--device", device, "--out", str(profile_md),
               "--json", str(profile_json)]
    # rows are kept as they finish, so CUDA graphs go before default compilation (which the first
    # lease already timed through whole epochs); the eager step's graphs first: no compilation
    profile += (["--batch", "16", "--steps", "1", "--modes", "eager"] if args.dry_run else
                ["--batch", "512", "--steps", "5", "--modes", "eager,cuda-graphs,reduce-overhead,default"])
    step("step-profile", profile, left("step-profile"))
    notebooks = [python, "-m", "dambq.workbook", "--profile", "smoke", "--device", device,
                 "--runs-dir", str(work / "smoke-runs"), "--out", str(work / "smoke-notebooks"),
                 "--figures-dir", str(work / "smoke-figures")]
    if has_module("papermill") or "notebooks-smoke" in skip:
        step("notebooks-smoke", notebooks, left("notebooks-smoke"))
    else:
        steps.append({"name": "notebooks-smoke", "command": shown(shlex.join(notebooks)), "code": "skipped: papermill "
                      "is not installed here (carry wheels: see the README's GPU section)", "seconds": 0.0, "log": "-"})
    # (b) epoch times, eager and compiled (the dry run leaves compilation to tests/test_engine.py:
    # inductor on a CPU takes minutes for the three ResNet20 graphs)
    epoch_md = work / "epoch-time.md"
    epoch = [python, "benchmarks/epoch_time.py", "--device", device, "--out", str(epoch_md)]
    epoch += (["--compile", "off", "--source", "synthetic", "--train-limit", "128", "--batch", "32", "--epochs", "2"]
              if args.dry_run else ["--compile", "both", "--compile-modes", args.compile_modes,
                                    "--batch", "512", "--epochs", "3"])
    if not args.dry_run and not args.epoch_eager:
        epoch[epoch.index("both")] = "on"
    step("epoch-time", epoch, left("epoch-time"))
    # (c) the paper profile for the rest, leaving a minute for writing up and packing
    budget = max(0.0, (left() - 60 * (0.05 if args.dry_run else 1.0)) / 60)
    paper = [python, "-m", "dambq.pipeline", "--profile", "smoke" if args.dry_run else "paper",
             "--stages", "float,w4a4,lba", "--out", str(checkpoints), "--device", device,
             "--time-budget", f"{budget:.2f}", "--no-progress", *fastest_engine(profile_json)]
    step("paper-profile", paper, 60 * budget + 120)
    # results/gpu.md
    import torch  # after the steps: the parent holds no device memory while they run
    from dambq.pipeline import device_name
    name = device_name(torch.device(device))
    lines = ["# GPU lease: CUDA checks, epoch time, paper profile" + (" (DRY RUN on CPU)" if args.dry_run else ""),
             "", f"Command: `python benchmarks/gpu_lease.py {shown(shlex.join(sys.argv[1:]))}`", "",
             f"Device: {name}; torch {torch.__version__}; Python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; total {(time.time() - started) / 60:.1f} min.", "",
             "| step | exit | seconds | command |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['code']} | {s['seconds']:.0f} | `{s['command']}` |" for s in steps]
    if profile_md.exists():
        lines += ["", "## Step profile", "", *shown(profile_md.read_text()).splitlines()[2:]]
    if epoch_md.exists():
        lines += ["", "## Epoch time", "", *shown(epoch_md.read_text()).splitlines()[2:]]
    lines += ["", f"## Paper profile ({checkpoints.relative_to(ROOT) if not args.dry_run else checkpoints})", "",
              "Epochs reached and top-1 (final epoch) per stage; rerun the command on the next lease to resume.", "",
              "| stage | epochs done | top-1 (%) | bits | precision | minutes |", "|---|---|---|---|---|---|",
              *stage_lines(checkpoints)]
    large = [p.name for p in checkpoints.glob("*.pt") if p.stat().st_size > CHECKPOINT_LIMIT_MB * 2**20]
    if large:
        lines += ["", f"Checkpoints over {CHECKPOINT_LIMIT_MB} MB (do not commit): {', '.join(large)}"]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print(results.read_text(), flush=True)
    if args.bundle:
        Path(args.bundle).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.bundle, "w:gz") as tar:
            tar.add(results, arcname=f"results/{results.name}")
            for log in work.glob("*.log"):
                tar.add(log, arcname=f"lease-logs/{log.name}")
            for table in (epoch_md, profile_md):
                if table.exists():
                    tar.add(table, arcname=f"lease-logs/{table.name}")
            if checkpoints.exists():
                tar.add(checkpoints, arcname="checkpoints/paper")
        print(f"packed {args.bundle}", flush=True)


if __name__ == "__main__":
    main()
