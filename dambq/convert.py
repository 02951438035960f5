"""Model conversion (float -> quantized), what it left float, and the size-weighted average bit-widths.

Calibration of the activation ranges lives in `dambq.calibrate`."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .codebook import CODEBOOKS, MAX_BITS
from .layers import QUANT_LAYERS, QuantMixin
from .quantizers import FLOAT_BITS, MAX_ACT_BITS, FloatAct, FloatWeight, UniformAct

DEFAULT_CODEBOOK = "lookup"  # measured best on trained ResNet20 weights: results/quant-error.md


ACT_SIGNED = ("auto", True, False, "symmetric")
ACT_RANGES = ("layer", "channel")


def convert(model: nn.Module, weight_bits: int | None = 4, act_bits: int | None = 4, granularity: str = "channel",
            keep_8bit: str | Sequence[str] | None = "auto", codebook: str = DEFAULT_CODEBOOK,
            inplace: bool = False, act_signed: bool | str = "auto", act_range: str = "layer") -> nn.Module:
    """Replace every convertible layer of `model` by its quantized version.

    Convertible: nn.Conv1d/2d/3d, nn.Linear and nn.MultiheadAttention (exact types; the
    registry is `dambq.layers.QUANT_LAYERS`). Grouped and depthwise convs, biases and
    hidden Linear layers work. Anything else that holds weights stays float and is named in
    a warning; `conversion_report` lists every module with the reason.

    Args:
        model: a float model (left untouched unless `inplace`).
        weight_bits: starting bits of every allocatable weight group, 0..4; None keeps the
            weights float (activation-only quantization).
        act_bits: starting bits of every allocatable input channel, 0..8; None keeps inputs
            float (the paper's A32 rows), the 8-bit layers' too, and the activation average
            then reads 32.
        granularity: "channel" (a bit-width per output channel and per input channel) or
            "layer" (one of each per layer).
        keep_8bit: "auto" keeps the first conv and the last linear (registration order) at 8
            bits as the paper does; a list names the modules to keep; None or [] keeps none.
        codebook: the weight code-book (`dambq.codebook.CODEBOOKS`).
        inplace: convert `model` itself. The default copies, because notebooks keep the float
            model beside the quantized one.
        act_signed: "auto" (inputs start unsigned, as after ReLU; `calibrate_act_clips` makes
            a layer signed when it sees its inputs go negative), True (signed, asymmetric
            range), "symmetric", or False (unsigned: negative inputs become 0).
        act_range: "layer" (one learnable range per layer's input, the paper's) or "channel"
            (one per input channel, beside its bits; for networks whose channels differ in scale
            by orders of magnitude, results/layer-ablation.md). Needs granularity="channel".

    Returns:
        The converted model.

    Raises:
        ValueError: bits out of range or not whole numbers, an unknown code-book or
            act_signed or act_range, act_range="channel" with granularity="layer", a keep_8bit
            name that is not convertible, or nothing to convert.

    Example:
        >>> import warnings
        >>> float_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        >>> _ = float_model(torch.zeros(1, 3, 8, 8))
        >>> q = convert(float_model, weight_bits=4, act_bits=4)
        >>> [type(m).__name__ for m in q if not isinstance(m, (nn.ReLU, nn.Flatten))]
        ['QuantConv2d', 'QuantLinear']
    """
    for value, what, high in ((weight_bits, "weight_bits", MAX_BITS), (act_bits, "act_bits", MAX_ACT_BITS)):
        if value is None:
            continue
        if isinstance(value, bool) or not float(value).is_integer() or not 0 <= value <= high:
            raise ValueError(f"{what} must be a whole number in 0..{high} (or None: keep float), got {value!r}")
    if act_signed not in ACT_SIGNED or isinstance(act_signed, int) and not isinstance(act_signed, bool):
        raise ValueError(f"act_signed must be one of {ACT_SIGNED}, got {act_signed!r}")
    if act_range not in ACT_RANGES:
        raise ValueError(f"act_range must be one of {ACT_RANGES}, got {act_range!r}")
    if act_range == "channel" and granularity != "channel":
        raise ValueError("act_range='channel' needs granularity='channel' (a range beside each channel's bits)")
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}, got {codebook!r}")
    weight_bits = None if weight_bits is None else int(weight_bits)
    act_bits = None if act_bits is None else int(act_bits)
    if not inplace:
        model = copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) in QUANT_LAYERS and _unconvertible(m) is None]
    if not targets:
        raise ValueError(f"nothing to convert: {type(model).__name__} has no layer of the types "
                         f"{[t.__name__ for t in QUANT_LAYERS]} (already converted layers are left alone)")
    keep = _resolve_keep_8bit(targets, keep_8bit)
    for name, module in targets:
        args = {"fixed_8bit": True, "act_bits": None if act_bits is None else 8} if name in keep else {
            "weight_bits": weight_bits, "act_bits": act_bits, "granularity": granularity, "codebook": codebook,
            "act_signed": act_signed}
        quantized = QUANT_LAYERS[type(module)].from_float(module, **args)
        if act_range == "channel":
            for q in quantized.modules():
                if isinstance(q, UniformAct) and q.channels > 1:
                    q.make_range_per_channel()
        if name == "":
            return quantized  # the model itself was a single layer
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantized)
    left = [(row["module"], row["reason"]) for row in conversion_report(model) if row["status"] == "float"
            and not row["reason"].startswith("normalisation")]
    if left:
        warnings.warn(f"{len(left)} module(s) with weights stay float: "
                      + "; ".join(f"{n} ({r})" for n, r in left[:12]) + (" ..." if len(left) > 12 else "")
                      + ". dambq.conversion_report(model) lists every module.", stacklevel=2)
    return model


NORMALISATION = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _unconvertible(module: nn.Module) -> str | None:
    """Why a module of a registered type is still left float (None: it converts)."""
    if isinstance(module, nn.MultiheadAttention):
        from .attention import unsupported_reason
        return unsupported_reason(module)
    return None


def _float_reason(module: nn.Module) -> str:
    if isinstance(module, NORMALISATION):
        return "normalisation: kept float (folded into the scales at export)"
    if type(module) in QUANT_LAYERS:
        return _unconvertible(module) or "not converted"
    if isinstance(module, nn.Embedding):
        return "embedding table: no quantized version"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return f"a subclass of {[t.__name__ for t in QUANT_LAYERS if isinstance(module, t)][0]} " \
               "(its forward may differ): not converted"
    if type(module).__module__.startswith("torch.nn"):
        return f"no quantized version of {type(module).__name__}"
    names = ", ".join(n for n, _ in module.named_parameters(recurse=False))
    return f"bare parameter(s) {names}: used by {type(module).__name__}'s own forward"


def conversion_report(model: nn.Module) -> list[dict]:
    """One row per module that owns parameters: what conversion made of it, and why.

    status: "quantized" (allocatable), "8-bit" (kept at 8 bits) or "float"; reason for
    float ones; weights: how many weight values it holds (matrices, kernels, tables and
    bare parameters; biases and norm scales count too, as float). Why: `average_bits`
    covers only the quantized layers, so the share of weights it speaks for belongs
    beside it (`quantized_weight_share`)."""
    rows = []
    quantized_names = {name for name, _ in quant_layers(model, include_8bit=True)}
    inside = tuple(f"{n}." for n in quantized_names)
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)]
        if name in quantized_names:
            rows.append({"module": name, "type": type(module).__name__,
                         "status": "8-bit" if module.fixed_8bit else "quantized", "reason": "",
                         "weights": module.weight.numel()})
        elif own and not name.startswith(inside):
            rows.append({"module": name or "(model)", "type": type(module).__name__, "status": "float",
                         "reason": _float_reason(module), "weights": sum(p.numel() for p in own)})
    return rows


def quantized_weight_share(model: nn.Module) -> float:
    """Share of the model's weight values (conv kernels, matrices, tables, bare parameters of
    two or more dims) that sit in quantized layers (8-bit ones included).

    Why: `average_bits` speaks only for the quantized layers; a ViT with its attention
    left float would report its target while a third of its weights stayed fp32."""
    quantized = {id(layer.weight) for _, layer in quant_layers(model, include_8bit=True)}
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    inside = sum(p.numel() for p in model.parameters() if id(p) in quantized)
    return inside / total if total else 0.0


def _resolve_keep_8bit(targets: list[tuple[str, nn.Module]], keep_8bit) -> set[str]:
    names = [name for name, _ in targets]
    if keep_8bit is None:
        return set()
    if keep_8bit == "auto":
        return paper_8bit_layers(targets)
    if isinstance(keep_8bit, str):
        raise ValueError(f"keep_8bit must be 'auto', None or a list of module names, got {keep_8bit!r}")
    missing = [n for n in keep_8bit if n not in names]
    if missing:
        raise ValueError(f"keep_8bit names {missing} are not convertible modules of this model; "
                         f"choose from {names}")
    return set(keep_8bit)


def paper_8bit_layers(layers: nn.Module | list[tuple[str, nn.Module]]) -> set[str]:
    """Names of the layers the paper keeps at 8 bits: the first conv and the last linear (in
    registration order; the first and last layer where there is no conv or no linear; none
    in a one-layer model). The one home of this rule: conversion, analysis and plots use it.

    Args:
        layers: a model (a converted one answers from its layers), or the (name, layer) list of
            a float model's convertible layers.

    Example:
        >>> sorted(paper_8bit_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(),
        ...                                        nn.Linear(64, 10))))
        ['0', '3']
    """
    if isinstance(layers, nn.Module):
        converted = list(quant_layers(layers, include_8bit=True))
        if converted:  # a converted model says which layers it keeps
            return {n for n, layer in converted if layer.fixed_8bit}
        layers = [(n, m) for n, m in layers.named_modules() if type(m) in QUANT_LAYERS]
    names = [n for n, _ in layers]
    if len(names) < 2:
        return set()
    convs = [n for n, m in layers if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    return {convs[0] if convs else names[0], linears[-1] if linears else names[-1]}


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


def average_bits(model: nn.Module, with_share: bool = False) -> tuple[float, ...]:
    """Size-weighted average (weight bits, activation bits) over the allocated layers.

    Weights count by the number of weights in each group, activations by the values per
    image in each channel at the last forward; the fixed 8-bit layers are left out, as in
    the paper, and so are float inputs (A32; the activation average reads 32 when no input
    is quantized) and float weights (activation-only conversion; reads 32 likewise). Why
    size-weighted: it is the storage and compute the network really uses, which is what a
    bit target is about.

    Args:
        model: a converted model.
        with_share: also return `quantized_weight_share(model)` as a third value, so that
            weights left float are never hidden behind the averages.

    Raises:
        ValueError: the model has no quantized layers.
    """
    w_bits = w_size = a_bits = a_size = 0.0
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("the model has no quantized layers: call dambq.convert first")
    for _, layer in layers:
        if has_quantized_weight(layer):
            sizes = weight_group_sizes(layer)
            w_bits += float((layer.weight_bits * sizes).sum())
            w_size += float(sizes.sum())
        if has_quantized_input(layer):
            sizes = act_channel_sizes(layer)
            a_bits += float((layer.act_bits * sizes).sum())
            a_size += float(sizes.sum())
    averages = (w_bits / w_size if w_size else float(FLOAT_BITS), a_bits / a_size if a_size else float(FLOAT_BITS))
    return averages + (quantized_weight_share(model),) if with_share else averages


def has_quantized_input(layer: QuantMixin) -> bool:
    """False for a layer converted weight-only (act_bits=None), whose input stays float."""
    return not isinstance(layer.act_quant, FloatAct)


def has_quantized_weight(layer: QuantMixin) -> bool:
    """False for a layer converted activation-only (weight_bits=None), whose weight stays float."""
    return not isinstance(layer.weight_quant, FloatWeight)


def act_clips(model: nn.Module) -> dict[str, float | list[float]]:
    """{layer name: learnable activation clip} of every uniform activation quantizer (a list,
    one clip per input channel, where the ranges are per channel)."""
    return {name.removesuffix(".act_quant"): module.act_clip.detach().tolist()
            for name, module in model.named_modules() if isinstance(module, UniformAct)}
