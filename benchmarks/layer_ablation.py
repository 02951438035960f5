"""Which layers' 8-bit inputs make a network's A8 error? One layer at a time, on trained zoo networks.

    python benchmarks/layer_ablation.py                      # regnet_y_400mf, efficientnet_b0, mobilenet_v2
    python benchmarks/layer_ablation.py --models efficientnet_b0 --top 5 --out /tmp/ablation.md

results/model-zoo.md found two briefly trained networks whose output error with every input at
8 bits (float weights) stays far above the 0.05 target: regnet_y_400mf and efficientnet_b0,
the two with squeeze-and-excitation blocks. This script trains each network as that table did
(`model_zoo.train_cifar`: 300 steps on a class-balanced CIFAR-10 subset), converts it the same way
(weight_bits=None, act_bits=8, keep_8bit=None, calibrated on 256 training images), and then:
  - the A8 error with every input quantized, and with only the network's own input rounded to 8
    bits (what any 8-bit scheme pays);
  - the error with *one* layer's input quantized and every other input float, for each layer;
  - for the layers that matter most, the input quantizer's own error ||Q(x) - x|| / ||x||, the share
    of values outside its range, the range and the input's min/max: clipping or rounding?
  - the float model with min/max 8-bit ranges per tensor or per input channel, from 256 or 4000
    training images or from the test images (`range_errors`): what a different range would buy.
Needs the CIFAR-10 data (DAMBQ_DATA or the usual places); about 20 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_zoo import input_rounding_error, quantized_copy, relative_error, train_cifar  # noqa: E402

from dambq.quantizers import Int8Act, UniformAct  # noqa: E402


def input_quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """{layer name: its input quantizer} for every quantized layer of a converted model."""
    return {name: m.act_quant for name, m in model.named_modules()
            if isinstance(getattr(m, "act_quant", None), (UniformAct, Int8Act))}


def only(model: nn.Module, keep: str | None) -> dict[str, nn.Module]:
    """Make every input quantizer but `keep`'s a pass-through (None: all of them); returns the
    removed ones, for `restore`."""
    removed = {}
    for name, m in model.named_modules():
        if name != keep and isinstance(getattr(m, "act_quant", None), (UniformAct, Int8Act)):
            removed[name] = m.act_quant
            m.act_quant = nn.Identity()
    return removed


def restore(model: nn.Module, removed: dict[str, nn.Module]) -> None:
    modules = dict(model.named_modules())
    for name, quantizer in removed.items():
        modules[name].act_quant = quantizer


@torch.no_grad()
def quantizer_stats(model: nn.Module, layer: str, images: torch.Tensor) -> dict:
    """The input quantizer of `layer` on the inputs `images` give it: its own relative error,
    the share of values outside its range, its range, and the inputs' min and max."""
    module = dict(model.named_modules())[layer]
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    for batch in images.split(64):
        model(batch)
    handle.remove()
    x = torch.cat([s.flatten() for s in seen])
    q = module.act_quant
    y = torch.cat([q(s).flatten() for s in seen])
    if isinstance(q, Int8Act):
        low, high = float(q.low), float(q.high)
    else:
        low, high = (float(t.detach()) for t in q.range())
    return {"input error": float((y - x).norm() / x.norm().clamp_min(1e-12)),
            "outside range (%)": 100 * float(((x < low) | (x > high)).float().mean()),
            "range": f"[{low:.3g}, {high:.3g}]", "input min/max": f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"}


def channels_first(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s input as [channels, everything else]: channels in dim 1 for a convolution, last
    for a linear layer (whose input may be [N, tokens, features])."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T
    return x.transpose(0, 1).reshape(x.shape[1], -1)


@torch.no_grad()
def range_errors(model: nn.Module, sets: dict, reference: torch.Tensor, counts: tuple[int, ...] = (256, 4000)) -> dict:
    """A8 error of the *float* model with every conv/linear input rounded to 8 bits on its
    min/max range (plain hooks, not dambq's quantizers): one range per tensor or one per input
    channel, measured on `counts` random training images or on the test images themselves
    (the oracle: nothing clipped). The experiment that separates clipping (ranges that a small
    calibration set makes too narrow) from rounding (one range shared by channels of very
    different sizes)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    test_x = sets["test_x"]

    def ranges(images: torch.Tensor) -> dict:
        lows, highs = {}, {}

        def observe(m, args):
            x = channels_first(m, args[0])
            lows[m] = torch.minimum(lows.get(m, x.min(1).values), x.min(1).values)
            highs[m] = torch.maximum(highs.get(m, x.max(1).values), x.max(1).values)
        hooks = [m.register_forward_pre_hook(observe) for m in layers]
        for batch in images.split(64):
            model(batch)
        for h in hooks:
            h.remove()
        return {m: (lows[m], highs[m]) for m in lows}  # a layer whose forward is never called (MHA's out_proj) has none

    def error(found: dict, per_channel: bool) -> float:
        def rounded(m, args):
            x, (low, high) = args[0], found[m]
            if per_channel:
                shape = [1] * x.dim()
                shape[-1 if isinstance(m, nn.Linear) else 1] = -1
                low, high = low.view(shape), high.view(shape)
            else:
                low, high = low.min(), high.max()
            step = (high - low).clamp_min(1e-8) / 255
            return (((x.clamp(low, high) - low) / step).round() * step + low,)
        hooks = [m.register_forward_pre_hook(rounded) for m in found]
        out = torch.cat([model(b) for b in test_x.split(64)])
        for h in hooks:
            h.remove()
        return float((out - reference).norm() / reference.norm())

    order = torch.randperm(len(sets["train_x"]), generator=torch.Generator().manual_seed(1))
    sources = {f"{n} training images": sets["train_x"][order[:n]] for n in counts}
    sources["the test images (oracle)"] = test_x
    row = {}
    for label, images in sources.items():
        found = ranges(images)
        row[f"per tensor, {label}"] = error(found, False)
        row[f"per channel, {label}"] = error(found, True)
    return row


def ablate(name: str, data, steps: int, top: int) -> tuple[dict, list[dict], dict]:
    model, sets = train_cifar(name, data, steps)
    test_x, calibration = sets["test_x"], sets["calibration"]
    with torch.no_grad():
        reference = torch.cat([model(b) for b in test_x.split(64)])
    input_only = input_rounding_error(model, reference, calibration, test_x)
    a8 = quantized_copy(model, calibration, weight_bits=None, act_bits=8, keep_8bit=None)
    modules = dict(a8.named_modules())
    rows = []
    for layer in input_quantizers(a8):
        removed = only(a8, layer)
        rows.append({"layer": layer, "type": type(modules[layer]).__name__,
                     "input": "signed" if getattr(modules[layer].act_quant, "signed", False) else "unsigned",
                     "error, this input alone": relative_error(reference, a8, test_x)})
        restore(a8, removed)
    rows.sort(key=lambda r: -r["error, this input alone"])
    for row in rows[:top]:
        row.update(quantizer_stats(a8, row["layer"], test_x))
    summary = {"model": name, "float top-1 (%)": 100 * float((reference.argmax(1) == sets["test_y"]).float().mean()),
               "A8 error, every input": relative_error(reference, a8, test_x), "input rounding alone": input_only,
               "sum of one-layer errors": sum(r["error, this input alone"] for r in rows),
               "layers": len(rows), "training seconds": round(sets["seconds"], 1)}
    return summary, rows[:top], {"model": name, **range_errors(model, sets, reference)}


def table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *["| " + " | ".join(cell(r.get(k, "-")) for k in keys) + " |" for r in rows]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="regnet_y_400mf,efficientnet_b0,mobilenet_v2")
    parser.add_argument("--cifar-steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=8, help="layers listed per network")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="results/layer-ablation.md")
    args = parser.parse_args()
    from dambq.data import load_cifar10
    from dambq.pipeline import cpu_model
    started = time.perf_counter()
    data = load_cifar10(args.data, train_limit=20000, test_limit=1000)  # the subsets model_zoo.py uses
    summaries, sections, range_rows = [], [], []
    for name in args.models.split(","):
        summary, rows, range_row = ablate(name, data, args.cifar_steps, args.top)
        summaries.append(summary)
        range_rows.append(range_row)
        sections += ["", f"### {name}: the {len(rows)} inputs that matter most", "", *table(rows)]
        print(summary, flush=True)
    lines = ["# Which 8-bit inputs make the A8 error (trained zoo networks, one layer at a time)", "",
             f"Command: `python benchmarks/layer_ablation.py{''.join(' ' + a for a in sys.argv[1:])}`",
             f"Machine: {cpu_model()}, torch {torch.__version__}, Python {platform.python_version()}; "
             f"{(time.perf_counter() - started) / 60:.1f} min.", "",
             f"Each network trained {args.cifar_steps} steps on CIFAR-10 as in results/model-zoo.md (same seed, "
             "subsets and recipe), converted with float weights and every input at 8 bits (keep_8bit=None), "
             "calibrated on 256 training images; relative output error ||y_q - y|| / ||y|| on the 1000 test "
             "images. *this input alone*: only that layer's input quantized, every other input float. "
             "*input error*: the quantizer's own relative error on that layer's inputs; *outside range*: "
             "the share of those inputs it clips.", "", *table(summaries), *sections, "",
             "## Ranges: per tensor or per channel, from how many images", "",
             "The float model with every conv/linear input rounded to 8 bits on a min/max range (plain hooks, "
             "not dambq's quantizers): one range per tensor or one per input channel, found on random "
             "training images or on the test images themselves (the oracle: nothing clipped). A8 error as "
             "above.", "", *table(range_rows)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
