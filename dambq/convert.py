"""Model conversion (float -> quantized) and the size-weighted average bit-widths."""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .codebook import CODEBOOKS, MAX_BITS
from .layers import QUANT_LAYERS, QuantMixin
from .quantizers import FLOAT_BITS, MAX_ACT_BITS, FloatAct, UniformAct

DEFAULT_CODEBOOK = "lookup"  # measured best on trained ResNet20 weights: results/quant-error.md


def convert(model: nn.Module, weight_bits: int = 4, act_bits: int | None = 4, granularity: str = "channel",
            keep_8bit: str | Sequence[str] | None = "auto", codebook: str = DEFAULT_CODEBOOK,
            inplace: bool = False) -> nn.Module:
    """Replace every nn.Conv2d and nn.Linear of `model` by its quantized version.

    `keep_8bit="auto"` keeps the first conv and the last linear (in registration
    order) at 8 bits as the paper does; a list names the modules to keep instead,
    and None or [] keeps none. Works on any model (grouped and depthwise convs,
    biases, hidden Linear layers). Returns a converted copy unless `inplace`.
    Why copy by default: notebooks keep the float model beside the quantized one.
    `act_bits=None` quantizes weights only (the paper's A32 rows): every input, the 8-bit
    layers' too, stays float and outside the activation average, which then reads 32."""
    if not 0 <= weight_bits <= MAX_BITS:
        raise ValueError(f"weight_bits must lie in 0..{MAX_BITS}, got {weight_bits}")
    if act_bits is not None and not 0 <= act_bits <= MAX_ACT_BITS:
        raise ValueError(f"act_bits must lie in 0..{MAX_ACT_BITS} (or None: weights only), got {act_bits}")
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}, got {codebook!r}")
    if not inplace:
        model = copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules() if type(m) in QUANT_LAYERS]
    if not targets:
        raise ValueError(f"nothing to convert: {type(model).__name__} has no nn.Conv2d or nn.Linear "
                         "(already converted layers are left alone)")
    keep = _resolve_keep_8bit(targets, keep_8bit)
    for name, module in targets:
        args = {"fixed_8bit": True, "act_bits": None if act_bits is None else 8} if name in keep else {
            "weight_bits": weight_bits, "act_bits": act_bits, "granularity": granularity, "codebook": codebook}
        quantized = QUANT_LAYERS[type(module)].from_float(module, **args)
        if name == "":
            return quantized  # the model itself was a single layer
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantized)
    return model


def _resolve_keep_8bit(targets: list[tuple[str, nn.Module]], keep_8bit) -> set[str]:
    names = [name for name, _ in targets]
    if keep_8bit is None:
        return set()
    if keep_8bit == "auto":
        convs = [n for n, m in targets if isinstance(m, nn.Conv2d)]
        linears = [n for n, m in targets if isinstance(m, nn.Linear)]
        keep = {convs[0] if convs else names[0], linears[-1] if linears else names[-1]}
        return keep if len(names) > 1 else set()
    if isinstance(keep_8bit, str):
        raise ValueError(f"keep_8bit must be 'auto', None or a list of module names, got {keep_8bit!r}")
    missing = [n for n in keep_8bit if n not in names]
    if missing:
        raise ValueError(f"keep_8bit names {missing} are not convertible modules of this model; "
                         f"choose from {names}")
    return set(keep_8bit)


def quant_layers(model: nn.Module, include_8bit: bool = False) -> Iterator[tuple[str, QuantMixin]]:
    """(name, layer) of every quantized layer, the fixed 8-bit ones only on request."""
    for name, module in model.named_modules():
        if isinstance(module, QuantMixin) and (include_8bit or not module.fixed_8bit):
            yield name, module


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` holds any quantized layer (8-bit ones included): such a model
    trains in float32 so that its levels stay exact."""
    return any(True for _ in quant_layers(model, include_8bit=True))


def weight_group_sizes(layer: QuantMixin) -> Tensor:
    """Number of weights in each weight group of a layer."""
    return torch.full_like(layer.weight_bits, layer.weight.numel() // layer.weight_bits.numel())


def act_channel_sizes(layer: QuantMixin) -> Tensor:
    """Activation values per image in each input channel, as seen at the last forward."""
    return layer.act_quant.positions.expand_as(layer.act_bits)


def average_bits(model: nn.Module) -> tuple[float, float]:
    """Size-weighted average (weight bits, activation bits) over the allocated layers
    (activations: over the quantized inputs; 32 when every input is float).

    Weights count by the number of weights in each group, activations by the
    values per image (C*H*W) in each channel at the last forward; the fixed 8-bit
    layers are left out, as in the paper. Why size-weighted: it is the storage and
    compute the network really uses, which is what a bit target is about."""
    w_bits = w_size = a_bits = a_size = 0.0
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("the model has no quantized layers: call dambq.convert first")
    for _, layer in layers:
        sizes = weight_group_sizes(layer)
        w_bits += float((layer.weight_bits * sizes).sum())
        w_size += float(sizes.sum())
        if has_quantized_input(layer):
            sizes = act_channel_sizes(layer)
            a_bits += float((layer.act_bits * sizes).sum())
            a_size += float(sizes.sum())
    return w_bits / w_size, (a_bits / a_size if a_size else float(FLOAT_BITS))


def has_quantized_input(layer: QuantMixin) -> bool:
    """False for a layer converted weight-only (act_bits=None), whose input stays float."""
    return not isinstance(layer.act_quant, FloatAct)


def act_clips(model: nn.Module) -> dict[str, float]:
    """{layer name: learnable activation clip} of every uniform activation quantizer."""
    return {name.removesuffix(".act_quant"): float(module.act_clip.detach())
            for name, module in model.named_modules() if isinstance(module, UniformAct)}


def mse_clip(values: Tensor, bits: int, candidates: int = 100) -> float:
    """The clip c in (0, max] that minimises the mean squared error of the unsigned
    `bits`-bit uniform quantizer round(clamp(x/c, 0, 1) * n) * c/n on `values`.

    Why a grid and not a formula: activations after ReLU are neither Gaussian nor
    Laplace (a spike at 0, a long tail), and 100 candidates on a sample cost
    milliseconds."""
    values = values.detach().float().flatten()
    top = float(values.max())
    if top <= 0:
        return 1.0  # all values clip to 0 whatever c is; keep a harmless positive clip
    n = 2 ** bits - 1
    clips = torch.linspace(top / candidates, top, candidates, device=values.device)
    errors = torch.stack([((values - (values / c * n).clamp(0, n).round() * c / n) ** 2).mean() for c in clips])
    return float(clips[errors.argmin()])


@torch.no_grad()
def calibrate_act_clips(model: nn.Module, images: Tensor, batch_size: int = 250,
                        sample_per_layer: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Set every uniform activation quantizer's learnable clip to the MSE-optimal
    clip of its own input, seen on `images` (normalised floats, on the model's device).

    Why: the spec's fixed initial clip 3.0 fits some layers and not others (ResNet20's
    inputs range over an order of magnitude between blocks), so the first epochs of
    quantized training are spent moving clips instead of weights. Layers are calibrated
    in order, each with the earlier ones already set, so each sees the inputs it will
    get. Bits: each layer's largest channel bit-width. Returns {layer name: clip}."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, UniformAct)]
    if not layers:
        raise ValueError("no uniform activation quantizers to calibrate: call dambq.convert first")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    clips: dict[str, float] = {}
    for name, quantizer in layers:
        seen: list[Tensor] = []
        hook = quantizer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().flatten()))
        try:
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
        finally:
            hook.remove()
        values = torch.cat(seen)
        if values.numel() > sample_per_layer:
            pick = torch.randint(values.numel(), (sample_per_layer,), generator=generator).to(values.device)
            values = values[pick]
        clips[name] = mse_clip(values, int(quantizer.bits.max()))
        quantizer.act_clip.fill_(clips[name])
    model.train(was_training)
    return clips
