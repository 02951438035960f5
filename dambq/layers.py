"""Drop-in quantized Conv1d/2d/3d and Linear (nn.MultiheadAttention: `dambq.attention`).

A quantized layer is the float layer plus two small quantizer modules: one for
its weight (`weight_quant`) and one for its input (`act_quant`). Biases are kept
(V2 dropped them). `fixed_8bit=True` gives the first/last-layer variant: 8-bit
weights and an 8-bit tracked input range, outside the bit allocation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codebook import MAX_BITS
from .quantizers import (MAX_ACT_BITS, DMBQWeight, FloatAct, FloatWeight, Int8Act, Int8Weight, UniformAct,
                         _as_bits)

GRANULARITIES = ("channel", "layer")


class QuantMixin:
    """What Quant layers share: building their quantizers, bits, and repr."""

    weight_quant: nn.Module
    act_quant: nn.Module
    fixed_8bit: bool

    def _build_quantizers(self, act_channels: int, act_channel_dim: int, weight_bits: int | None,
                          act_bits: int | None, granularity: str, codebook: str, fixed_8bit: bool,
                          act_signed: bool | str = False) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.fixed_8bit, self.granularity = fixed_8bit, granularity
        weight_groups = self.weight.shape[0] if granularity == "channel" else 1
        if fixed_8bit:
            self.weight_quant = Int8Weight(weight_groups)
            self.act_quant = Int8Act(act_channels) if act_bits is not None else FloatAct(act_channels)
            return
        # weight-only (act_bits=None, the paper's A32) or activation-only (weight_bits=None)
        self.weight_quant = FloatWeight(weight_groups) if weight_bits is None else \
            DMBQWeight(self.weight, weight_groups, weight_bits, codebook)
        if act_bits is None:
            self.act_quant = FloatAct(act_channels)
        else:  # "auto" starts unsigned; calibration switches layers whose inputs go negative
            self.act_quant = UniformAct(act_channels if granularity == "channel" else 1, act_bits,
                                        act_channel_dim, signed=act_signed if act_signed != "auto" else False)
            self.act_quant.auto_sign = act_signed == "auto"

    @property
    def weight_bits(self) -> Tensor:
        """Bits per weight group (LongTensor)."""
        return self.weight_quant.bits

    @property
    def act_bits(self) -> Tensor:
        """Bits per input channel (LongTensor; one value under layer granularity)."""
        return self.act_quant.bits

    def set_bits(self, weight_bits: int | Tensor | None = None, act_bits: int | Tensor | None = None) -> None:
        """Set weight bits per group and/or activation bits per channel (int or tensor).

        Why a method: it range-checks (weights 0..4, activations 0..8) and keeps
        the buffers on their device, so callers never write a bad bit-width."""
        if self.fixed_8bit:
            raise ValueError(f"{type(self).__name__} is fixed at 8 bits; its bits cannot be set")
        if weight_bits is not None:
            if isinstance(self.weight_quant, FloatWeight):
                raise ValueError(f"{type(self).__name__} was converted activation-only (weight_bits=None): "
                                 "its weight is float and has no bits to set")
            bits = _as_bits(weight_bits, self.weight_bits.numel(), 0, MAX_BITS, "weight_bits")
            self.weight_quant.bits.copy_(bits)
        if act_bits is not None:
            if isinstance(self.act_quant, FloatAct):
                raise ValueError(f"{type(self).__name__} was converted weight-only (act_bits=None): "
                                 "its input is float and has no bits to set")
            bits = _as_bits(act_bits, self.act_bits.numel(), 0, MAX_ACT_BITS, "act_bits")
            self.act_quant.bits.copy_(bits)

    @torch.no_grad()
    def _load_float(self, module: nn.Module):
        """Copy weight and bias from the float layer; restart the weight statistics."""
        self.weight.copy_(module.weight)
        if module.bias is not None:
            self.bias.copy_(module.bias)
        self.weight_quant.reset_statistics(self.weight)
        return self

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass uses (no EMA update when in eval mode)."""
        return self.weight_quant(self.weight)


class _QuantConvNd(QuantMixin):
    """Conv1d/2d/3d with DMBQ weights (one code per output channel) and quantized input."""

    _float: type[nn.modules.conv._ConvNd]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 weight_bits: int | None = 4, act_bits: int | None = 4, granularity: str = "channel",
                 codebook: str = "lookup", fixed_8bit: bool = False, act_signed: bool | str = False,
                 device=None, dtype=None):
        self._float.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                             groups, bias, padding_mode, device=device, dtype=dtype)
        # the channel dim counted from the end: right for batched and unbatched inputs alike
        channel_dim = -(len(self.kernel_size) + 1)
        self._build_quantizers(in_channels, channel_dim, weight_bits, act_bits, granularity, codebook,
                               fixed_8bit, act_signed)

    @classmethod
    def from_float(cls, conv: nn.Module, **quant_args):
        """A quantized copy of `conv`, weight and bias included."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                    **quant_args)
        return layer._load_float(conv)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """nn.Conv1d, quantized (see `QuantConv2d`)."""

    _float = nn.Conv1d


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """nn.Conv2d with DMBQ weights (one code per output channel) and quantized input."""

    _float = nn.Conv2d


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """nn.Conv3d, quantized (see `QuantConv2d`)."""

    _float = nn.Conv3d


class QuantLinear(QuantMixin, nn.Linear):
    """nn.Linear with DMBQ weights (one code per output row) and quantized input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_bits: int | None = 4, act_bits: int | None = 4, granularity: str = "channel",
                 codebook: str = "lookup", fixed_8bit: bool = False, act_signed: bool | str = False,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._build_quantizers(in_features, -1, weight_bits, act_bits, granularity, codebook, fixed_8bit,
                               act_signed)

    @classmethod
    def from_float(cls, linear: nn.Linear, **quant_args) -> "QuantLinear":
        """A quantized copy of `linear`, weight and bias included."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype, **quant_args)
        return layer._load_float(linear)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


QUANT_LAYERS: dict[type, type] = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
                                  nn.Linear: QuantLinear}
"""Float layer type -> its quantized version (exact types: a subclass may change the forward).
`dambq.attention` registers nn.MultiheadAttention."""
