"""Activation-range calibration: one pass over sample images sets every input quantizer.

Why calibrate: the spec's fixed initial clip 3.0 fits some layers and not others (ResNet20's
inputs range over an order of magnitude between blocks), so the first epochs of quantized
training would be spent moving clips instead of weights; and the 8-bit layers' input ranges
would otherwise stay unset (inputs unquantized) until a training step.

How: forward hooks let every input quantizer pass its input on unquantized (the weights
are quantized as they will be) while they keep a bounded random sample of it (so memory per layer does not grow with the data), then each clip is
the MSE-optimal one for its own sample. Where convert's `act_signed="auto"`, a layer whose
inputs go negative becomes signed when the signed quantizer's error is the lower one.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .quantizers import Int8Act, UniformAct


MINMAX_BITS = 8
"""Ranges per channel calibrated at this many bits or more are the channel's min / max over
the calibration images, not the MSE-optimal range of its sample. Why: the MSE fit sees a
few thousand values per channel (`per_channel_minimum`); at 8 bits rounding costs little,
so the clip it picks mostly cuts the rare large values the sample missed. Trained regnet_y_400mf
and efficientnet_b0 got a larger A8 error with MSE ranges per channel than with one range per
layer; with min / max per channel both came down (regnet 0.169 -> 0.069 on 4000 images in
results/model-zoo.md, `python benchmarks/model_zoo.py`). One range per layer keeps MSE: its sample holds up to
`sample_per_layer` values, and there the two measured alike or MSE better."""


def _grid_error(values: Tensor, lows: Tensor, highs: Tensor, n: int) -> Tensor:
    """Mean squared error of the n-step uniform quantizer on [low, high] for each candidate:
    the one-channel case of `_grid_error_per_channel`."""
    lows, highs = (v.to(values.device, values.dtype)[None] for v in (lows, highs))
    return _grid_error_per_channel(values[None], lows, highs, n)[0]


def mse_clip(values: Tensor, bits: int, candidates: int = 100) -> float:
    """The clip c in (0, max] that minimises the mean squared error of the unsigned
    `bits`-bit uniform quantizer round(clamp(x/c, 0, 1) * n) * c/n on `values`.

    Why a grid and not a formula: activations after ReLU are neither Gaussian nor
    Laplace (a spike at 0, a long tail), and 100 candidates on a sample cost milliseconds.

    Example:
        >>> mse_clip(torch.tensor([0.0, 1.0, 2.0, 3.0]), bits=2)
        3.0
    """
    values = values.detach().float().flatten()
    top = float(values.max())
    if top <= 0:
        return 1.0  # all values clip to 0 whatever c is; keep a harmless positive clip
    clips = torch.linspace(top / candidates, top, candidates, device=values.device)
    errors = _grid_error(values, torch.zeros_like(clips), clips, 2 ** bits - 1)
    return float(clips[errors.argmin()])


def mse_range(values: Tensor, bits: int, candidates: int = 100) -> tuple[float, float, float]:
    """(low, high, error) of the signed `bits`-bit quantizer on [low, high] with the least
    mean squared error on `values`: first both ends scaled together from [min, max], then
    the low end alone.

    Example:
        >>> low, high, _ = mse_range(torch.tensor([-1.0, 0.0, 1.0, 2.0]), bits=2)
        >>> (low, high)
        (-1.0, 2.0)
    """
    values = values.detach().float().flatten()
    lo, hi = float(values.min()), float(values.max())
    n = 2 ** bits - 1
    scales = torch.linspace(1 / candidates, 1, candidates)
    errors = _grid_error(values, scales * lo, scales * hi, n)
    best = int(errors.argmin())
    high = float(scales[best] * hi)
    lows = scales * lo
    errors = _grid_error(values, lows, torch.full_like(lows, high), n)
    best = int(errors.argmin())
    return float(lows[best]), high, float(errors[best])


def _grid_error_per_channel(values: Tensor, lows: Tensor, highs: Tensor, n: int) -> Tensor:
    """Mean squared error [C, K] of the n-step uniform quantizer on [lows, highs] ([C, K]
    candidates) for each channel's values ([C, m])."""
    errors = []
    for k in range(lows.shape[1]):
        low, high = lows[:, k:k + 1], highs[:, k:k + 1]
        step = (high - low).clamp_min(1e-12) / n
        q = ((values - low) / step).clamp(0, n).round() * step + low
        errors.append(((values - q) ** 2).mean(1))
    return torch.stack(errors, 1)


def mse_ranges_per_channel(values: Tensor, lows: Tensor, highs: Tensor, bits: int, signed: bool,
                           candidates: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """(low [C], high [C], error [C]) of each channel's MSE-optimal `bits`-bit range.

    values [C, m] is a sample of each channel's inputs; lows / highs [C] are the extremes seen
    over all calibration images (not only the sample's), so that the candidates reach as far as
    the data did. Unsigned: low = 0 and high from (0, max]; signed: both ends scaled together
    from [min, max], then the low end alone (as `mse_range`).

    Example:
        >>> v = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.1, 0.2, 0.3]])
        >>> low, high, _ = mse_ranges_per_channel(v, v.amin(1), v.amax(1), bits=2, signed=False)
        >>> [round(h, 3) for h in high.tolist()]
        [3.0, 0.3]
    """
    values = values.float()
    scales = torch.linspace(1 / candidates, 1, candidates, device=values.device)[None, :]
    n = 2 ** bits - 1
    if not signed:
        top = highs.float().clamp_min(0)[:, None]
        clips = torch.where(top > 0, top * scales, torch.ones_like(scales))  # all <= 0: a harmless clip 1
        errors = _grid_error_per_channel(values, torch.zeros_like(clips), clips, n)
        best = errors.argmin(1, keepdim=True)
        return torch.zeros(len(values), device=values.device), clips.gather(1, best)[:, 0], errors.gather(1, best)[:, 0]
    lo, hi = lows.float()[:, None], highs.float()[:, None]
    errors = _grid_error_per_channel(values, lo * scales, hi * scales, n)
    high = (hi * scales).gather(1, errors.argmin(1, keepdim=True))
    low_candidates = lo * scales
    errors = _grid_error_per_channel(values, low_candidates, high.expand_as(low_candidates), n)
    best = errors.argmin(1, keepdim=True)
    return low_candidates.gather(1, best)[:, 0], high[:, 0], errors.gather(1, best)[:, 0]


@torch.no_grad()
def calibrate_act_clips(model: nn.Module, images: Tensor, batch_size: int = 250,
                        sample_per_layer: int = 200_000, seed: int = 0, per_channel_minimum: int = 2000) -> dict[str, float | tuple[float, float]]:
    """Set every input quantizer's range from one pass of `images` through `model`.

    Uniform quantizers get the MSE-optimal clip of their own input (activation quantization
    off, weight quantization on) at their largest channel bit-width (signed ones an
    MSE-optimal [low, high]; with ranges per channel, each channel its own, or its min / max
    at `MINMAX_BITS` or more); the fixed 8-bit layers get their input's min/max (so they
    quantize from the first evaluation on).

    Args:
        model: a converted model (any device; `images` must be on the same one).
        images: normalised input batch(es), e.g. 2000 training images.
        batch_size: images per forward pass.
        sample_per_layer: at most this many values kept per layer (a random sample).
        per_channel_minimum: where ranges are per channel (convert's act_range="channel"), at
            least this many values kept per channel (so a wide layer keeps more than
            sample_per_layer in all).
        seed: seeds the sample.

    Returns:
        {layer name: clip}, or (low, high) for a signed layer (lists, one value per channel,
        where the ranges are per channel).

    Raises:
        ValueError: no activation quantizers, non-finite values in `images` or in a layer's
            input (nothing is changed then).

    Example:
        >>> import dambq
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
        >>> _ = net(torch.zeros(1, 3, 8, 8))
        >>> q = dambq.convert(net, 4, 4)
        >>> clips = calibrate_act_clips(q, torch.randn(64, 3, 8, 8))
        >>> q[2].act_quant.signed       # its inputs come from a SiLU
        True
    """
    quantizers = [(name, m) for name, m in model.named_modules() if isinstance(m, (UniformAct, Int8Act))]
    per_channel = {name for name, m in quantizers if isinstance(m, UniformAct) and m.range_per_channel}
    by_name = dict(quantizers)
    if not any(isinstance(m, UniformAct) for _, m in quantizers):
        raise ValueError("no uniform activation quantizers to calibrate: call dambq.convert first")
    if not torch.isfinite(images).all():
        raise ValueError("calibration images hold NaN or inf values: clean the data first (no clip was changed)")
    per_batch = max(1, math.ceil(sample_per_layer * min(batch_size, len(images)) / len(images)))
    generator = torch.Generator().manual_seed(seed)
    samples: dict[str, list[Tensor]] = {name: [] for name, _ in quantizers}
    extremes: dict[str, list] = {name: [math.inf, -math.inf] for name, _ in quantizers}

    def watch(name: str):
        def hook(module, args, output):
            x = args[0].detach().float()
            if not torch.isfinite(x).all():
                raise ValueError(f"non-finite values reach the input of {name!r} during calibration "
                                 "(no clip was changed)")
            if name in per_channel:  # [C, values]: exact extremes per channel, a sample of each channel
                q = by_name[name]
                x = x.movedim(q.channel_dim % x.dim(), 0).reshape(q.channels, -1)
                low, high = extremes[name]
                extremes[name] = [torch.minimum(x.amin(1), torch.as_tensor(low, device=x.device)),
                                  torch.maximum(x.amax(1), torch.as_tensor(high, device=x.device))]
                keep = max(1, math.ceil(max(per_channel_minimum, sample_per_layer // q.channels)
                                        * min(batch_size, len(images)) / len(images)))
                if x.shape[1] > keep:
                    x = x[:, torch.randint(x.shape[1], (keep,), generator=generator).to(x.device)]
                samples[name].append(x)
                return args[0]
            x = x.flatten()
            extremes[name][0] = min(extremes[name][0], float(x.min()))
            extremes[name][1] = max(extremes[name][1], float(x.max()))
            if x.numel() > per_batch:  # a random sample (with replacement: no permutation of millions)
                x = x[torch.randint(x.numel(), (per_batch,), generator=generator).to(x.device)]
            samples[name].append(x)
            return args[0]  # the input goes on unquantized: one pass serves every layer
        return hook

    hooks = [m.register_forward_hook(watch(name)) for name, m in quantizers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    results: dict[str, float | tuple[float, float]] = {}
    for name, quantizer in quantizers:
        low, high = extremes[name]
        if isinstance(quantizer, Int8Act):
            quantizer.low.fill_(low)
            quantizer.high.fill_(high)
            quantizer.tracked.fill_(True)
            continue
        bits = max(1, int(quantizer.bits.max()))
        if bits >= MINMAX_BITS and name in per_channel:
            results[name.removesuffix(".act_quant")] = _set_extremes(quantizer, low, high)
            continue
        if name in per_channel:
            values = torch.cat(samples[name], 1)
            results[name.removesuffix(".act_quant")] = _set_ranges_per_channel(quantizer, values, bits, low, high)
            continue
        values = torch.cat(samples[name])
        results[name.removesuffix(".act_quant")] = _set_range(quantizer, values, bits, low < 0)
    return results


def _set_extremes(quantizer: UniformAct, low: Tensor, high: Tensor) -> tuple[list[float], list[float]] | list[float]:
    """Set each channel's range to the one that clips nothing on the calibration data ([0, max],
    or [min, max] where the inputs go negative and the quantizer may be signed)."""
    low, high = (torch.as_tensor(v, dtype=torch.float32, device=quantizer.act_clip.device) for v in (low, high))
    negative = bool((low < 0).any())
    if quantizer.sign_mode == "symmetric":
        clip = torch.maximum(low.abs(), high.abs())
        clip = torch.where(clip > 0, clip, torch.ones_like(clip))
        quantizer.act_clip.detach().copy_(clip.expand_as(quantizer.act_clip))
        return (-clip).tolist(), clip.tolist()
    if quantizer.signed or (getattr(quantizer, "auto_sign", False) and negative):
        high = torch.where(high > low, high, low + 1)  # a constant channel: any range that holds it
        quantizer.make_signed(low=low, high=high)
        return low.tolist(), high.tolist()
    clip = torch.where(high > 0, high, torch.ones_like(high))  # all <= 0: every value is 0, keep a positive clip
    quantizer.act_clip.detach().copy_(clip.expand_as(quantizer.act_clip))
    return clip.tolist()


def _set_ranges_per_channel(quantizer: UniformAct, values: Tensor, bits: int, lows: Tensor,
                            highs: Tensor) -> tuple[list[float], list[float]] | list[float]:
    """Fit a range per channel; make the layer signed where allowed and better in total."""
    auto = getattr(quantizer, "auto_sign", False)
    if quantizer.sign_mode == "symmetric":
        top = torch.maximum(lows.abs(), highs.abs())
        _, clip, _ = mse_ranges_per_channel(values.abs(), torch.zeros_like(top), top, max(1, bits - 1), False)
        quantizer.act_clip.copy_(clip)
        return (-clip).tolist(), clip.tolist()
    if quantizer.signed or (auto and bool((lows < 0).any())):
        low, high, error = mse_ranges_per_channel(values, lows, highs, bits, True)
        unsigned = None if quantizer.signed else mse_ranges_per_channel(values, lows, highs, bits, False)
        if unsigned is None or float(error.sum()) < float(unsigned[2].sum()):
            quantizer.make_signed(low=low, high=high)
            return low.tolist(), high.tolist()
        clip = unsigned[1]
    else:
        clip = mse_ranges_per_channel(values, lows, highs, bits, False)[1]
    quantizer.act_clip.copy_(clip)
    return clip.tolist()


def _set_range(quantizer: UniformAct, values: Tensor, bits: int, negative: bool) -> float | tuple[float, float]:
    """Fit the quantizer's range; make it signed where allowed and better."""
    auto = getattr(quantizer, "auto_sign", False)
    clip = None
    if quantizer.signed or (auto and negative):
        if quantizer.sign_mode == "symmetric":
            clip = mse_clip(values.abs(), bits - 1) if bits > 1 else float(values.abs().max())
            quantizer.act_clip.fill_(clip)
            return (-clip, clip)
        low, high, error = mse_range(values, bits)
        if not quantizer.signed:  # auto: signed only where its error is the lower one
            clip = mse_clip(values, bits)
            unsigned_error = float(_grid_error(values, torch.zeros(1), torch.tensor([clip]), 2 ** bits - 1)[0])
        if quantizer.signed or error < unsigned_error:
            quantizer.make_signed(low=low, high=high)
            return (low, high)
    clip = mse_clip(values, bits) if clip is None else clip
    quantizer.act_clip.fill_(clip)
    return clip
