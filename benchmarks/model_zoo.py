"""Does `dambq.convert` work on *your* model? Torchvision models, a small attention model,
and small CNNs trained on real data (scikit-learn's bundled digits), from one command:

    python benchmarks/model_zoo.py                  # writes results/model-zoo.md (about 35 min on 2 CPU cores)
    python benchmarks/model_zoo.py --models resnet18,vit_b_16 --cifar-steps 0 --out /tmp/zoo.md

Part 1, torchvision models with random initial weights (BatchNorm statistics set by a few
training-mode passes; nothing downloaded): how many layers convert, which stay float and
why, how many inputs the calibration found to go negative, and the relative output error
||y_q - y|| / ||y|| on held-out random images, (a) activations at 8 bits with float
weights, unsigned quantizers only (what dambq did before signed inputs), (b) the same with
act_signed="auto", (c) W4A4 with act_signed="auto", each right after calibration; and what
no calibration can beat: (b) with ranges set from the test images themselves (oracle), and how
many times the network magnifies a small input perturbation.

Part 2, the same networks trained briefly on real CIFAR-10 at 32x32 (`--cifar-steps`, 300 SGD
steps of 128 images from a class-balanced 20000-image subset; needs the data, e.g. DAMBQ_DATA;
vit_b_16 left out: a ViT-B at 32x32 trains for hours on 2 cores): the same errors on real test
images. Why both: a network with random weights amplifies any rounding of its early layers many
times over (part 1's "input rounding alone" column), which says more about random networks
than about quantizers; a trained network is what a user converts.

Part 3, the digits CNNs (4 convs, ReLU / GELU / SiLU / Tanh, three seeds): float top-1 and
W4A4 top-1 right after calibration with unsigned, symmetric and asymmetric (auto) inputs:
the measurement behind the asymmetric default.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dambq
from dambq.convert import conversion_report, quantized_weight_share
from dambq.quantizers import UniformAct

ZOO = ["resnet18", "squeezenet1_0", "regnet_y_400mf", "mobilenet_v2", "shufflenet_v2_x0_5",
       "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16", "tiny_vit"]
LARGE_CALIBRATION = 4000  # per-channel ranges need thousands of images (results/layer-ablation.md: 256 were too few)
ACTIVATIONS = {"ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "Tanh": nn.Tanh}


class TinyViT(nn.Module):
    """A small attention model: 4x4 patches of a 32x32 image, two encoder layers (GELU), a head."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2, classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.position = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.encoder(tokens).mean(1))


def build(name: str) -> tuple[nn.Module, int]:
    """(model with random weights, input size)."""
    if name == "tiny_vit":
        return TinyViT(), 32
    import torchvision
    model = torchvision.models.get_model(name, weights=None)
    for m in model.modules():  # ViT's head starts at zero: every output would be 0 and the error 0/0
        if isinstance(m, nn.Linear) and not m.weight.any():
            nn.init.normal_(m.weight, std=0.02)
    return model, 224


@torch.no_grad()
def set_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Give BatchNorm layers the statistics of `images` (cumulative averages), as a trained model has."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for batch in images.split(8):
        model(batch)
    model.eval()


@torch.no_grad()
def relative_error(reference: torch.Tensor, quantized: nn.Module, images: torch.Tensor) -> float:
    """||y_q - y|| / ||y|| over all of `images` at once (the zoo's error measure)."""
    return relative_errors(reference, quantized, images)[0]


@torch.no_grad()
def relative_errors(reference: torch.Tensor, quantized: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(||y_q - y|| / ||y|| over all images, the median over images of each image's own relative
    error). Why both: the first weighs images by the size of their outputs, so a network whose
    outputs for a few images are hundreds of times the median's (efficientnet_b0 after 300 steps,
    results/calibration-spread.md) is measured on those few; the median is the typical image."""
    out = torch.cat([quantized(b) for b in images.split(8)])
    flat, ref = (out - reference).flatten(1), reference.flatten(1)
    return float(flat.norm() / ref.norm()), float((flat.norm(dim=1) / ref.norm(dim=1)).median())


@torch.no_grad()
def input_rounding_error(model: nn.Module, reference: torch.Tensor, calibration: torch.Tensor,
                         images: torch.Tensor) -> float:
    """Relative output error from rounding only the network's input to 8 bits on the calibration
    images' range: the floor of any 8-bit scheme on this network."""
    low, high = float(calibration.min()), float(calibration.max())
    step = (high - low) / 255
    rounded = ((images.clamp(low, high) - low) / step).round() * step + low
    return relative_error(reference, model, rounded)


@torch.no_grad()
def noise_amplification(model: nn.Module, reference: torch.Tensor, images: torch.Tensor, eps: float = 1e-3,
                        seed: int = 0) -> float:
    """How many times a network magnifies a small input perturbation: the relative output error
    from Gaussian noise of `eps` times the images' standard deviation, divided by `eps`.

    Why: every 8-bit input quantizer perturbs its layer's input by about half a percent; a
    network that magnifies that fifteenfold (random-weight mobilenet_v2, regnet_y_400mf,
    shufflenet_v2_x0_5: results/model-zoo.md) errs by several percent whatever ranges it is
    given, while trained ones magnify it less than once."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    return relative_error(reference, model, images + eps * float(images.std()) * noise) / eps


def oracle_a8_error(model: nn.Module, reference: torch.Tensor, images: torch.Tensor) -> float:
    """A8 error (float weights, every input at 8 bits) with each input channel's range set from
    `images` themselves, the images it is measured on: nothing clipped, the tightest such range.
    A calibration on other images can hardly do better with one uniform 8-bit range per channel:
    where this misses a target, better calibration will not reach it."""
    return relative_error(reference, quantized_copy(model, images, weight_bits=None, act_bits=8, keep_8bit=None,
                                                    act_range="channel"), images)


def build_cifar(name: str) -> nn.Module:
    """The zoo network with a 10-class head for 32x32 inputs, random initial weights."""
    if name == "tiny_vit":
        return TinyViT()
    import torchvision
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def train_cifar(name: str, data, steps: int, seed: int = 0) -> tuple[nn.Module, dict]:
    """`name` trained briefly on CIFAR-10 (SGD, nesterov, lr 0.02, gradient norm clipped at 5, batch
    128, no augmentation: the point is a network with learned structure, not its accuracy; at lr
    0.05 without clipping squeezenet1_0's weights became NaN), in evaluation mode, with its
    normalised images: {"train_x", "test_x", "test_y", "calibration" (256 training images),
    "calibration_large" (LARGE_CALIBRATION of them), "seconds"}.

    Raises:
        RuntimeError: the weights became non-finite."""
    *_, (_, model, sets) = train_cifar_marks(name, data, (steps,), seed)
    return model, sets


def train_cifar_marks(name: str, data, marks: tuple[int, ...], seed: int = 0):
    """One training run of `train_cifar`, yielding (steps, model, sets) at each of the ascending
    step counts `marks`: each is what `train_cifar(name, data, steps, seed)` returns (the same
    weights and calibration images; a test checks it), so one run measures a network at several
    stages of training. The model trains on after each yield: copy it to keep it.

    Raises:
        RuntimeError: the weights became non-finite by a mark."""
    from dambq.batches import normalize
    if list(marks) != sorted(set(marks)) or not marks or marks[0] < 0:
        raise ValueError(f"marks must be ascending step counts, got {marks}")
    torch.manual_seed(seed)
    model = build_cifar(name)
    train_x, train_y = normalize(data.train_images), data.train_labels
    test_x, test_y = normalize(data.test_images), data.test_labels
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    trained, done = 0.0, 0  # seconds of training alone (not what the consumer does between marks)
    for mark in marks:
        started = time.perf_counter()
        model.train()
        for _ in range(mark - done):
            pick = torch.randint(0, len(train_x), (128,), generator=gen)
            loss = F.cross_entropy(model(train_x[pick]), train_y[pick])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        done = mark
        model.eval()
        trained += time.perf_counter() - started
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise RuntimeError(f"{name} diverged in its {mark} training steps (non-finite weights)")
        # the calibration draw of a run that stopped here: from a copy, so training goes on unchanged
        order = torch.randperm(len(train_x), generator=torch.Generator().set_state(gen.get_state()))
        yield mark, model, {"train_x": train_x, "test_x": test_x, "test_y": test_y,
                            "calibration": train_x[order[:256]],
                            "calibration_large": train_x[order[:LARGE_CALIBRATION]], "seconds": trained}


def cifar_row(name: str, data, steps: int, seed: int = 0) -> dict:
    """`train_cifar`, then the output errors right after calibration on 256 training images, on
    the test images (the whole subset: it is ordered by class)."""
    model, sets = train_cifar(name, data, steps, seed)
    test_x, test_y, calibration, trained = sets["test_x"], sets["test_y"], sets["calibration"], sets["seconds"]
    with torch.no_grad():
        reference = torch.cat([model(b) for b in test_x.split(64)])
    a8 = quantized_copy(model, calibration, weight_bits=None, act_bits=8, keep_8bit=None)
    w4a4 = quantized_copy(model, calibration, weight_bits=4, act_bits=4)
    large = sets["calibration_large"]
    a8_large = quantized_copy(model, large, weight_bits=None, act_bits=8, keep_8bit=None)
    a8_channel = quantized_copy(model, large, weight_bits=None, act_bits=8, keep_8bit=None, act_range="channel")
    with torch.no_grad():
        w4a4_out = torch.cat([w4a4(b) for b in test_x.split(64)])
    channel_all, channel_median = relative_errors(reference, a8_channel, test_x)
    return {
        "model": name,
        "float top-1 (%)": 100 * float((reference.argmax(1) == test_y).float().mean()),
        "W4A4 top-1 (%)": 100 * float((w4a4_out.argmax(1) == test_y).float().mean()),
        "A8 error": relative_error(reference, a8, test_x),
        "W4A4 error": float((w4a4_out - reference).norm() / reference.norm()),
        f"A8 error, {len(large)} images": relative_error(reference, a8_large, test_x),
        f"A8 error, ranges per channel, {len(large)} images": channel_all,
        "the same, median image's error": channel_median,
        "A8 error, oracle ranges": oracle_a8_error(model, reference, test_x),
        "noise amplification": noise_amplification(model, reference, test_x, seed=seed),
        "training seconds": round(trained, 1),
    }


def quantized_copy(model: nn.Module, calibration: torch.Tensor, **convert_args) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = dambq.convert(model, **convert_args).eval()
    dambq.calibrate_act_clips(q, calibration, batch_size=8)
    return q


def zoo_row(name: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model, size = build(name)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(48, 3, size, size, generator=gen)
    set_batchnorm(model, images[:16])
    calibration, test = images[16:32], images[32:]
    with torch.no_grad():
        reference = torch.cat([model(b) for b in test.split(8)])
    started = time.perf_counter()
    a8_unsigned = quantized_copy(model, calibration, weight_bits=None, act_bits=8, keep_8bit=None, act_signed=False)
    a8 = quantized_copy(model, calibration, weight_bits=None, act_bits=8, keep_8bit=None)
    a8_channel = quantized_copy(model, calibration, weight_bits=None, act_bits=8, keep_8bit=None,
                                act_range="channel")
    w4a4 = quantized_copy(model, calibration, weight_bits=4, act_bits=4)
    report = conversion_report(w4a4)
    float_left = [r for r in report if r["status"] == "float" and not r["reason"].startswith("normalisation")]
    signed = [m for m in a8.modules() if isinstance(m, UniformAct) and m.signed]
    inputs = [m for m in a8.modules() if isinstance(m, UniformAct)]
    input_only = input_rounding_error(model, reference, calibration, test)
    return {
        "model": name,
        "converted": sum(r["status"] != "float" for r in report),
        "8-bit": sum(r["status"] == "8-bit" for r in report),
        "left float (not norms)": len(float_left),
        "float reasons": "; ".join(sorted({f"{r['type']}: {r['reason']}" for r in float_left})) or "-",
        "weights quantized (%)": round(100 * quantized_weight_share(w4a4), 1),
        "signed inputs": f"{len(signed)} / {len(inputs)}",
        "A8 error, unsigned only": relative_error(reference, a8_unsigned, test),
        "A8 error": relative_error(reference, a8, test),
        "A8 error, ranges per channel": relative_error(reference, a8_channel, test),
        "W4A4 error": relative_error(reference, w4a4, test),
        "input rounding alone": input_only,
        "A8 error, oracle ranges": oracle_a8_error(model, reference, test),
        "noise amplification": noise_amplification(model, reference, test, seed=seed),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ------------------------------------------------------------------------------ digits

def digits_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled 8x8 digits (1797 real images, no download), normalised, split 2:1."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = 1200
    return x[:cut], y[:cut], x[cut:], y[cut:]


def digits_cnn(activation: type[nn.Module]) -> nn.Module:
    """Four convolutions and a linear head for 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), activation(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), activation(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), activation(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), activation(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10))


def train_digits(activation: str, seed: int = 0, epochs: int = 15) -> tuple[nn.Module, tuple]:
    """A digits CNN trained with Adam (a few seconds on 2 CPU cores); returns (model, data)."""
    torch.manual_seed(seed)
    data = digits_data(seed)
    x, y = data[0], data[1]
    model = digits_cnn(ACTIVATIONS[activation])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), data


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.eval()(x).argmax(1) == y).float().mean() * 100)


def digits_rows(seeds: int = 3) -> list[dict]:
    rows = []
    for activation in ACTIVATIONS:
        for seed in range(seeds):
            model, (x, y, xt, yt) = train_digits(activation, seed)
            row = {"activation": activation, "seed": seed, "float": top1(model, xt, yt)}
            for label, signed in (("unsigned", False), ("symmetric", "symmetric"), ("asymmetric (auto)", "auto")):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = dambq.convert(model, 4, 4, act_signed=signed)
                if signed == "symmetric":
                    for m in q.modules():
                        if isinstance(m, UniformAct):
                            m.make_signed(symmetric=True)
                dambq.calibrate_act_clips(q, x[:500], batch_size=100)
                row[label] = top1(q, xt, yt)
            with torch.no_grad():
                q8 = quantized_copy(model, x[:500], weight_bits=None, act_bits=8, keep_8bit=None)
                row["A8 error"] = relative_error(model(xt), q8, xt)
            rows.append(row)
    return rows


def markdown(rows: list[dict], floats: tuple[str, ...] = ()) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if k in floats else (f"{r[k]:.2f}" if isinstance(r[k], float)
                                                                         else str(r[k])) for k in keys) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--seeds", type=int, default=3, help="digits CNN seeds per activation")
    parser.add_argument("--cifar-steps", type=int, default=300,
                        help="train each zoo network this many steps on CIFAR-10 for part 2 (0: skip part 2)")
    parser.add_argument("--data", default=None, help="CIFAR-10 location (default: DAMBQ_DATA or the usual places)")
    parser.add_argument("--out", default="results/model-zoo.md")
    args = parser.parse_args()
    from dambq.pipeline import cpu_model
    started = time.perf_counter()
    zoo = []
    for name in args.models.split(","):
        zoo.append(zoo_row(name))
        print(zoo[-1], flush=True)
    cifar = []
    if args.cifar_steps:
        from dambq.data import load_cifar10
        data = load_cifar10(args.data, train_limit=20000, test_limit=1000)  # class-balanced, seeded subsets
        for name in args.models.split(","):
            if name != "vit_b_16":
                cifar.append(cifar_row(name, data, args.cifar_steps))
                print(cifar[-1], flush=True)
    digits = digits_rows(args.seeds)
    for row in digits:
        print(row, flush=True)
    means = []
    for activation in ACTIVATIONS:
        rs = [r for r in digits if r["activation"] == activation]
        means.append({"activation": activation, **{k: sum(r[k] for r in rs) / len(rs)
                                                   for k in ("float", "unsigned", "symmetric", "asymmetric (auto)",
                                                             "A8 error")}})
    errors = ("A8 error, unsigned only", "A8 error", "A8 error, ranges per channel", "W4A4 error",
              "input rounding alone", "A8 error, oracle ranges")
    cifar_channel_key = f"A8 error, ranges per channel, {LARGE_CALIBRATION} images"
    median_key = "the same, median image's error"
    def worst(rows: list[dict], key: str) -> str:  # a dead network's 0/0 = NaN is no quantization error
        finite = [(r[key], r["model"]) for r in rows if math.isfinite(r[key])]
        return "%.3f (%s)" % max(finite) if finite else "-"

    text = "\n".join([
        "# Any model: conversion, signed inputs, output error", "",
        "Command: `python benchmarks/model_zoo.py"
        + (f" --models {args.models}" if args.models != ",".join(ZOO) else "")
        + (f" --cifar-steps {args.cifar_steps}" if args.cifar_steps != 300 else "") + "`",
        f"Machine: {cpu_model()}, torch {torch.__version__}, Python {platform.python_version()}; "
        f"{(time.perf_counter() - started) / 60:.1f} min.", "",
        "## Torchvision models (random initial weights, BatchNorm statistics set, nothing downloaded)", "",
        "Relative output error ||y_q - y|| / ||y|| on 16 held-out random images, right after calibration on 16 "
        "others. A8: activations at 8 bits, float weights, every layer (keep_8bit=None); *unsigned only* is "
        "dambq before signed inputs (negative inputs became 0). W4A4: the default conversion (first conv and "
        "last linear at 8 bits). Random-weight networks are harder to quantize than trained ones (no "
        "structure in the weights), so the W4A4 column is an upper bound of sorts, not a trained model's error. "
        "*ranges per channel*: A8 with convert's act_range='channel' (each input channel's min / max over the "
        "16 calibration images: few values per channel, so a range can miss what test images reach). "
        "*input rounding alone*: the error from rounding only the network's input to 8 bits (its calibration "
        "range), which any 8-bit scheme pays. *oracle ranges*: A8 with each input channel's range the min / max "
        "of the 16 test images themselves (`oracle_a8_error`): nothing clipped, nothing to gain from a better "
        "calibration. *noise amplification*: the relative output error from Gaussian input noise of 0.1 % of "
        "the images' spread, divided by 0.001 (`noise_amplification`): a random network that magnifies every "
        "8-bit rounding some fifteenfold cannot reach a small A8 error whatever ranges its quantizers get.",
        "", *markdown(zoo, floats=errors), "",
        f"Largest A8 error with signed inputs: {worst(zoo, 'A8 error')}; with ranges per channel "
        f"{worst(zoo, 'A8 error, ranges per channel')}; input rounding alone up to "
        f"{worst(zoo, 'input rounding alone')}; with oracle ranges {worst(zoo, 'A8 error, oracle ranges')} "
        f"(target <= 0.05): {', '.join(r['model'] for r in zoo if r['A8 error, oracle ranges'] > 0.05) or 'none'} "
        "miss it even with the oracle's ranges.", "",
        *([f"## The same networks trained {args.cifar_steps} steps on CIFAR-10 (32x32, real images)", "",
           f"Each trained from random weights for {args.cifar_steps} SGD steps of 128 images (lr 0.02, gradient "
           "norm clipped at 5; a class-balanced "
           "20000-image training subset; no augmentation): short of a finished training, but with learned "
           "structure. Errors as above on 1000 real test images (100 per class), right after calibration on "
           "256 training images; top-1 on the same images. vit_b_16 is left out (hours on 2 cores at this size); "
           "tiny_vit is the attention model here. The last three error columns calibrate on "
           f"{LARGE_CALIBRATION} training images instead, with one range per layer (as before) and with a range "
           "per input channel (convert's act_range='channel'; at 8 bits each channel's min / max over those "
           "images, `dambq.calibrate.MINMAX_BITS`: an MSE fit on a few thousand values per channel clipped what its "
           "sample missed and measured worse than one range per layer here). "
           "*the same, median image's error*: that last quantized copy measured per image (each test image's own relative error, the median over "
           "images; `relative_errors`): the columns before weigh images by the size of their outputs, so a "
           "network with a few huge outputs is measured on those few. *oracle ranges* and *noise amplification* "
           "as above, on the 1000 test images.", "",
           *markdown(cifar, floats=tuple(k for k in cifar[0] if "error" in k)), "",
           f"Largest A8 error, trained networks: {worst(cifar, 'A8 error')} with one range per layer "
           f"and 256 images; with ranges per channel on {LARGE_CALIBRATION} images "
           f"{worst(cifar, cifar_channel_key)}, for the median image {worst(cifar, median_key)}, with oracle "
           f"ranges {worst(cifar, 'A8 error, oracle ranges')} "
           "(target <= 0.05; a network whose outputs are all 0 gives NaN and is left out).", ""]
          if cifar else []),
        "## Digits CNNs (real data: scikit-learn's 8x8 digits, 1200 train / 597 test)", "",
        "Four convolutions with BatchNorm, trained 15 epochs with Adam; top-1 (%) of the float model and of W4A4 "
        "right after calibration on 500 training images, no quantized training. Inputs of the 4-bit layers: "
        "unsigned (negative values become 0), symmetric signed [-c, c], asymmetric signed [low, high] (the "
        f"default under act_signed='auto'). Mean of {args.seeds} seeds:", "",
        *markdown(means, floats=("A8 error",)), "", "*A8 error*: relative output error of the trained float model "
        "with every input at 8 bits (act_signed='auto', float weights, keep_8bit=None), the column of the "
        "table above for a trained network.", "", "Every seed:", "", *markdown(digits, floats=("A8 error",)), "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
