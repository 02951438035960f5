"""Behaviour unchanged? The library's numerics at an older commit against the working tree.

Why: the refactors of the "one home per concept" issue (snapping, the shape statistic,
calibration, the 8-bit rule, the allocator's bookkeeping moved or merged) must not change
what the library computes. Regenerating every results file would take hours of CPU per
profile; this runs the same fixed experiment through the public API of both versions, in
fresh processes, and compares them number for number:

  a small residual ReLU CNN (fixed seed, BatchNorm statistics from a few batches), converted
  to channel-wise W4A4 with every layer quantized (keep_8bit=None: the old 8-bit input
  tracker started differently, on purpose), activation clips calibrated on 32 images (few enough
  that the newer bounded sample per layer holds every value), then every clip set to 1.0 and 12 SGD steps
  with a BitAllocator lowering W4A4 towards W2.0A2.0 over three "epochs"; recorded: the
  clips, the loss of every step, the evaluation output, every layer's bits after each epoch.

Inputs are non-negative images: the old activation quantizer was unsigned only. Calibration
itself changed by design (issue "any model": one pass with every input quantizer passing its
input on unquantized, where the older code calibrated layer by layer with the earlier layers
already quantized), so only the first layer's clip, whose input is the same either way, is
expected to agree; the training that follows starts from equal clips in both versions.

    python benchmarks/behaviour_check.py --ref f6ad2e1 --out results/behaviour-check.md

prints and writes one line per quantity: identical, or the largest difference.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def experiment(out: str) -> None:
    """Run the fixed experiment with whatever `dambq` is importable; save what it computed."""
    import torch
    from torch import nn

    import dambq

    torch.set_num_threads(1)  # one thread: the same reduction order in both processes
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        Block(16), nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                        nn.ReLU(), Block(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(96, 3, 16, 16, generator=g)
    labels = torch.randint(0, 10, (96,), generator=g)
    net.train()
    with torch.no_grad():
        for batch in images.split(32):
            net(batch)
    q = dambq.convert(net, 4, 4, keep_8bit=None)
    # 32 images: every layer's input (at most 32*16*16*16 values) fits in the working tree's bounded
    # calibration sample (200k values per layer), so both versions fit clips to all values
    clips = dambq.calibrate_act_clips(q, images[:32])
    clips = {name.removesuffix(".act_quant"): clip for name, clip in clips.items()}  # the old keys named the quantizer
    # the same start in both for what follows: calibration changed by design (below)
    for name, p in q.named_parameters():
        if name.endswith("act_clip"):
            p.data.fill_(1.0)
    alloc = dambq.BitAllocator(q, weight_target=2.0, act_target=2.0, window=(0, 2))
    optimizer = torch.optim.SGD(q.parameters(), lr=0.05, momentum=0.9)
    losses, bits = [], []
    q.train()
    for epoch in range(3):
        for step in range(4):
            x = images[step * 16:(step + 1) * 16]
            y = labels[step * 16:(step + 1) * 16]
            loss = nn.functional.cross_entropy(q(x), y)
            optimizer.zero_grad()
            loss.backward()
            alloc.accumulate()
            optimizer.step()
            losses.append(loss.detach())
        alloc.end_epoch(epoch)
        bits.append({name: buf.clone() for name, buf in q.named_buffers() if name.endswith("bits")})
    q.eval()
    with torch.no_grad():
        output = q(images[64:])
    torch.save({"clips": {k: torch.tensor(v, dtype=torch.float64) for k, v in clips.items()},
                "losses": torch.stack(losses), "output": output, "bits": bits,
                "averages": torch.tensor(dambq.average_bits(q), dtype=torch.float64)}, out)


def run(code_dir: Path, out: Path) -> dict:
    import torch
    env = dict(os.environ, PYTHONPATH=str(code_dir), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, __file__, "--worker", str(out)], env=env, check=True, cwd=tempfile.gettempdir())
    return torch.load(out, weights_only=False)


def largest_difference(a, b) -> float:
    """0.0 where identical; inf where the structure differs (other layers, other keys)."""
    import torch
    if isinstance(a, dict):
        if set(a) != set(b):
            return float("inf")
        return max((largest_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list):
        return float("inf") if len(a) != len(b) else max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="f6ad2e1", help="the older commit (default: before the refactors)")
    parser.add_argument("--out", default=None, help="write a markdown summary here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        experiment(args.worker)
        return
    import torch

    from dambq.pipeline import cpu_model
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old_dir = Path(tmp) / "old"
        old_dir.mkdir()
        archive = subprocess.run(["git", "archive", commit, "dambq"], cwd=ROOT, capture_output=True, check=True).stdout
        (Path(tmp) / "old.tar").write_bytes(archive)
        with tarfile.open(Path(tmp) / "old.tar") as tar:
            tar.extractall(old_dir, filter="data")
        old = run(old_dir, Path(tmp) / "old.pt")
        new = run(ROOT, Path(tmp) / "new.pt")
    rows = []
    first = next(iter(old["clips"]))
    old["first clip"], new["first clip"] = old["clips"][first], new["clips"][first]
    for key, what in [("first clip", "calibrated clip of the first layer (its input is the images either way)"),
                      ("clips", "calibrated clips of the later layers (one pass now, layer by layer then)"), ("losses", "training loss, 12 steps"),
                      ("bits", "every layer's bits after each of 3 allocation epochs"),
                      ("averages", "average bits (weights, activations)"), ("output", "evaluation output, 32 images")]:
        diff = largest_difference(old[key], new[key])
        rows.append(f"| {what} | {'identical' if diff == 0 else f'differ, largest difference {diff:.3g}'} |")
    lines = ["# Behaviour check: the library's numerics, an older commit against the working tree", "",
             f"Command: `python benchmarks/behaviour_check.py --ref {args.ref}"
             + (f" --out {args.out}`" if args.out else "`"), "",
             f"Older commit: {commit}. Machine: {cpu_model()}, one thread, torch {torch.__version__}, "
             f"Python {platform.python_version()}. What runs: see the docstring of benchmarks/behaviour_check.py "
             f"(a small residual ReLU CNN, W4A4 with every layer quantized, calibration, 12 SGD steps with LBA "
             f"towards W2.0A2.0, evaluation).", "",
             "| quantity | older commit vs working tree |", "|---|---|", *rows, ""]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
