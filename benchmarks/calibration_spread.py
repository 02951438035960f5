"""How much an 8-bit error with ranges per channel depends on which images calibrate it.

    python benchmarks/calibration_spread.py                        # efficientnet_b0, ~28 min on 2 CPU cores
    python benchmarks/calibration_spread.py --models regnet_y_400mf,efficientnet_b0
    python benchmarks/calibration_spread.py --cifar-steps 300,2000   # one training run, measured at both

Each network is trained exactly as in part 2 of benchmarks/model_zoo.py (same seed, subsets,
300 steps unless --cifar-steps names others), converted with float weights, every input at 8 bits and a range per input channel
(act_range="channel": each channel's min / max over its calibration images, see
`dambq.calibrate.MINMAX_BITS`), and calibrated on random training images drawn with several
seeds and in the sizes --sizes names; the relative output error ||y_q - y|| / ||y|| is measured on the same
1000 test images. Each calibration is also measured with every range widened by a quarter of its
span on both sides: if clipping of test values outside the calibrated ranges made the error,
widening would lower it; if rounding within the ranges did, it raises it. Each calibration is
also measured with every rounding replaced by uniform noise of one step (+-step/2, nothing
clipped): if that errs as much, the network is as sensitive to any perturbation of the
rounding's size, and only a smaller step could lower the error. Each calibration set also
calibrates a copy with one range per layer (convert's default), and each row counts the inputs
holding a range per channel in both copies. With several training step counts
(`--cifar-steps 300,2000`), one training run is measured at each: is the error a property of
a barely trained network?
Writes results/calibration-spread.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_zoo import quantized_copy, relative_error, relative_errors, train_cifar_marks  # noqa: E402

from dambq.quantizers import UniformAct  # noqa: E402

WIDEN = 0.25  # of each range's span, on both sides
PER_LAYER = "A8 error, one range per layer"  # the same images, convert's default act_range="layer"
NOISE = "uniform noise of one step instead of rounding"  # `noise_error`
TYPICAL = "A8 error, median over images"  # each test image's own ||y_q - y|| / ||y|| (`relative_errors`)
DESCRIPTION = " ".join(__doc__.split("\n\n")[2].split())  # the docstring's paragraph that says what is measured


@torch.no_grad()
def widen(model: torch.nn.Module, fraction: float = WIDEN) -> None:
    """Every input range [low, high] -> [low - f * span, high + f * span] (unsigned: high only)."""
    for m in model.modules():
        if isinstance(m, UniformAct):
            low, high = (t.detach() for t in m.range())
            span = high - low
            m.act_clip.add_(fraction * span)
            if m.sign_mode == "asymmetric":
                m.act_low.sub_(fraction * span)


def spread(name: str, data, steps: int | tuple[int, ...], seeds: int, sizes: tuple[int, ...],
           top: int = 0) -> list[dict]:
    """One row per (training steps, calibration seed, size): the A8 error with ranges per channel
    as calibrated and widened; calibration seed "zoo" is the set benchmarks/model_zoo.py uses.
    Several `steps` measure one training run at each of them (`model_zoo.train_cifar_marks`)."""
    rows = []
    for mark, model, sets in train_cifar_marks(name, data, (steps,) if isinstance(steps, int) else tuple(steps)):
        with torch.no_grad():
            rows += [{"steps": mark, **row} for row in _measure(name, model, sets, seeds, sizes, top)]
    return rows


def _measure(name: str, model: torch.nn.Module, sets: dict, seeds: int, sizes: tuple[int, ...],
             top: int = 0) -> list[dict]:
    test_x, train_x = sets["test_x"], sets["train_x"]
    reference = torch.cat([model(b) for b in test_x.split(64)])
    top1 = 100 * float((reference.argmax(1) == sets["test_y"]).float().mean()) if "test_y" in sets else float("nan")
    norms = reference.norm(dim=1)
    draws = [("zoo", sets["calibration_large"])]
    for seed in range(1, seeds + 1):
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
        draws += [(seed, train_x[order[:n]]) for n in sizes]
    rows = []
    for seed, images in draws:
        per_layer = quantized_copy(model, images, weight_bits=None, act_bits=8, keep_8bit=None, act_range="layer")
        q = quantized_copy(model, images, weight_bits=None, act_bits=8, keep_8bit=None, act_range="channel")
        error, typical = relative_errors(reference, q, test_x)
        attribution = attribute(q, reference, test_x, top) if top and seed == "zoo" else None  # before widening
        noise = noise_error(q, reference, test_x)
        widen(q)
        rows.append({"model": name, "float top-1 (%)": top1, "calibration seed": seed, "images": len(images),
                     "A8 error": error, TYPICAL: typical, NOISE: noise,
                     f"ranges widened {WIDEN:.0%} each side": relative_error(reference, q, test_x),
                     PER_LAYER: relative_error(reference, per_layer, test_x),
                     "inputs with ranges per channel": ranges_per_channel(q),
                     "inputs with ranges per channel, per-layer copy": ranges_per_channel(per_layer),
                     "output norm, median / max": (float(norms.median()), float(norms.max()))})
        if attribution is not None:
            rows[-1]["attribution"] = attribution
        print(rows[-1], flush=True)
    return rows


class _UniformNoise(torch.nn.Module):
    """Stands in for an input quantizer: adds uniform noise of one rounding step (+-step/2) where
    the quantizer would round, and clips nothing. Why: if the network errs as much with this noise
    as with the quantizer, rounding costs what any perturbation of its size would, and only a
    smaller step (a narrower range) could lower it."""

    def __init__(self, quantizer: UniformAct, generator: torch.Generator):
        super().__init__()
        self.quantizer, self.generator = quantizer, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = (t.detach() for t in self.quantizer.range())
        step = (high - low) / (2 ** self.quantizer.bits - 1).to(x.dtype)
        if step.numel() > 1:  # bits (and maybe ranges) per channel
            shape = [1] * x.dim()
            shape[self.quantizer.channel_dim % x.dim()] = -1
            step = step.view(shape)
        noise = torch.rand(x.shape, generator=self.generator, dtype=x.dtype, device=x.device) - 0.5
        if not self.quantizer.signed:  # [0, clip] holds 0 exactly: ReLU's zeros are not rounded
            noise = noise * (x != 0)
        return x + noise * step


@torch.no_grad()
def noise_error(q: torch.nn.Module, reference: torch.Tensor, images: torch.Tensor, seed: int = 0) -> float:
    """The relative output error of `q` with every input quantizer replaced by uniform noise of its
    rounding step (`_UniformNoise`); the quantizers are put back."""
    layers = [m for m in q.modules() if isinstance(getattr(m, "act_quant", None), UniformAct)]
    saved = [m.act_quant for m in layers]
    generator = torch.Generator().manual_seed(seed)
    try:
        for m, quantizer in zip(layers, saved):
            m.act_quant = _UniformNoise(quantizer, generator)
        return relative_error(reference, q, images)
    finally:
        for m, quantizer in zip(layers, saved):
            m.act_quant = quantizer


@torch.no_grad()
def attribute(q: torch.nn.Module, reference: torch.Tensor, images: torch.Tensor, top: int) -> dict:
    """Which inputs make the 8-bit error: each quantized input alone (every other one passed
    through float), the `top` largest, and the error of the whole copy with those `top` left float.

    Returns:
        {"alone": [(error, layer name, channels), ...] largest first, "without top": error}."""
    layers = [(name, m) for name, m in q.named_modules() if isinstance(getattr(m, "act_quant", None), UniformAct)]
    saved = {name: m.act_quant for name, m in layers}
    try:
        for _, m in layers:
            m.act_quant = torch.nn.Identity()
        alone = []
        for name, m in layers:
            m.act_quant = saved[name]
            alone.append((relative_error(reference, q, images), name, saved[name].channels))
            m.act_quant = torch.nn.Identity()
        alone.sort(reverse=True)
        worst = {name for _, name, _ in alone[:top]}
        for name, m in layers:
            m.act_quant = torch.nn.Identity() if name in worst else saved[name]
        without = relative_error(reference, q, images)
    finally:
        for name, m in layers:
            m.act_quant = saved[name]
    return {"alone": alone[:top], "without top": without}


def ranges_per_channel(model: torch.nn.Module) -> str:
    """"k of n": how many of the n input quantizers hold a range per channel (a check that each
    column measures the ranges it names)."""
    inputs = [m for m in model.modules() if isinstance(m, UniformAct)]
    return f"{sum(m.range_per_channel for m in inputs)} of {len(inputs)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_b0")
    parser.add_argument("--cifar-steps", default="300",
                        help="training steps, or a comma list: one run measured at each (e.g. 300,2000)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sizes", default="4000,12000")
    parser.add_argument("--attribute", type=int, default=5,
                        help="list the N inputs whose 8-bit rounding alone errs most (model_zoo's calibration set)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="results/calibration-spread.md")
    args = parser.parse_args(argv)
    from dambq.data import load_cifar10
    from dambq.pipeline import cpu_model
    started = time.perf_counter()
    data = load_cifar10(args.data, train_limit=20000, test_limit=1000)  # the subsets model_zoo.py uses
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models.split(","):
            rows += spread(name, data, tuple(int(v) for v in args.cifar_steps.split(",")), args.seeds, sizes,
                           args.attribute)
    widened = f"ranges widened {WIDEN:.0%} each side"
    lines = ["# The 8-bit error with ranges per channel, calibrated on different images", "",
             f"Command: `python benchmarks/calibration_spread.py{''.join(' ' + a for a in (argv or sys.argv[1:]))}`",
             f"Machine: {cpu_model()}, torch {torch.__version__}, Python "
             f"{platform.python_version()}; {(time.perf_counter() - started) / 60:.1f} min.", "",
             DESCRIPTION, "",
             "| model | training steps | float top-1 (%) | calibration seed | images | A8 error | " + TYPICAL + " | "
             + NOISE + " | "
             + widened + " | " + PER_LAYER + " | inputs with ranges per channel (per channel / per layer copy) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r['float top-1 (%)']:.1f} | {r['calibration seed']} | {r['images']} | "
              f"{r['A8 error']:.3f} | {r[TYPICAL]:.3f} | {r[NOISE]:.3f} | {r[widened]:.3f} | {r[PER_LAYER]:.3f} | "
              f"{r['inputs with ranges per channel']} / {r['inputs with ranges per channel, per-layer copy']} |"
              for r in rows]
    lines.append("")
    for name, steps in dict.fromkeys((r["model"], r["steps"]) for r in rows):
        group = [r for r in rows if (r["model"], r["steps"]) == (name, steps)]
        errors, layer = [r["A8 error"] for r in group], [r[PER_LAYER] for r in group]
        worse = sum(r[widened] > r["A8 error"] for r in group)
        lower = sum(r["A8 error"] < r[PER_LAYER] for r in group)
        median_norm, max_norm = group[0]["output norm, median / max"]
        lines.append(f"{name} after {steps} steps ({group[0]['float top-1 (%)']:.1f} % top-1): A8 error "
                     f"{min(errors):.3f} - {max(errors):.3f} (median {statistics.median(errors):.3f}) over "
                     f"{len(errors)} calibration sets, for the median test image "
                     f"{min(r[TYPICAL] for r in group):.3f} - {max(r[TYPICAL] for r in group):.3f}; "
                     f"uniform noise of one step instead of rounding "
                     f"{min(r[NOISE] for r in group):.3f} - {max(r[NOISE] for r in group):.3f}; widening raised it in "
                     f"{worse} of {len(errors)}. One range per layer: {min(layer):.3f} - {max(layer):.3f} (median "
                     f"{statistics.median(layer):.3f}); ranges per channel were lower in {lower} of {len(errors)}. "
                     f"Float output norm per test image: median {median_norm:.2f}, largest {max_norm:.1f}.")
        lines.append("")
    for r in rows:
        if "attribution" in r:
            a = r["attribution"]
            lines += ["", f"### {r['model']} after {r['steps']} steps: which inputs make the error (calibration seed "
                      "zoo, ranges per channel)",
                      "", "Each input alone at 8 bits, every other one left float:", "",
                      "| input of | channels | A8 error, this input alone |", "|---|---|---|"]
            lines += [f"| {layer} | {channels} | {error:.3f} |" for error, layer, channels in a["alone"]]
            lines += ["", f"All inputs at 8 bits: {r['A8 error']:.3f}; with these {len(a['alone'])} left float: "
                      f"{a['without top']:.3f}."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
