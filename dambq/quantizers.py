"""Fake quantizers: DMBQ weights, uniform activations, and the fixed 8-bit pair.

Each quantizer is a small module that owns its bit-widths and its saved range
state, so that a converted or reloaded model evaluates exactly as it trained.
The two hot paths are single autograd functions (forward computes the quantized
tensor in place, backward recomputes what it needs from the input), because a
chain of element-wise ops saves a tensor per op and dominated V2's step time.

Loss-guided allocation needs, per weight group and per activation channel, the
first-order estimate ``sum(error * dL/dQ)``. The backward passes add it to a
``step_sensitivity`` buffer when tracking is switched on (``track``), on the
device and without retaining any gradient; with tracking off it costs nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .codebook import MAX_BITS, build_codebook

MAX_ACT_BITS = 8
FLOAT_BITS = 32  # what an unquantized (A32) input reads as in tables
TRACK_MODES = (None, "current", "next")


def _check_bits(bits: Tensor, low: int, high: int, what: str) -> None:
    if bits.numel() and (int(bits.min()) < low or int(bits.max()) > high):
        raise ValueError(f"{what} must lie in {low}..{high}, got values in "
                         f"{int(bits.min())}..{int(bits.max())}")


def _as_bits(bits: int | Tensor, size: int, low: int, high: int, what: str) -> Tensor:
    """A LongTensor of `size` bit-widths from an int or a tensor, range-checked."""
    bits = torch.as_tensor(bits).long().flatten()
    if bits.numel() == 1:
        bits = bits.expand(size).clone()
    if bits.numel() != size:
        raise ValueError(f"{what}: expected 1 or {size} values, got {bits.numel()}")
    _check_bits(bits, low, high, what)
    return bits


# ----------------------------------------------------------------------------- weights

class _SnapToLevels(torch.autograd.Function):
    """Nearest of each row's levels; straight-through inside the clip.

    forward(w [G, n], levels [G, L] sorted, clip [G], sensitivity [G] or None,
    next_levels [G, L] or None). When `sensitivity` is given, backward adds
    sum_j (w - Q(w))_j * dL/dQ_j per group (or, with `next_levels`, the change
    the next lower bit-width would make, sum_j (Q_{b-1} - Q_b)_j * dL/dQ_j)."""

    @staticmethod
    def forward(ctx, w, levels, clip, sensitivity, next_levels):
        thresholds = ((levels[:, 1:] + levels[:, :-1]) * 0.5).contiguous()
        q = torch.gather(levels, 1, torch.searchsorted(thresholds, w.contiguous()))
        ctx.sensitivity, ctx.has_next = sensitivity, next_levels is not None
        ctx.save_for_backward(w, q, clip, next_levels if next_levels is not None else q)
        return q

    @staticmethod
    def backward(ctx, grad_q):
        w, q, clip, next_levels = ctx.saved_tensors
        if ctx.sensitivity is not None:
            with torch.no_grad():
                if ctx.has_next:
                    thresholds = ((next_levels[:, 1:] + next_levels[:, :-1]) * 0.5).contiguous()
                    q_next = torch.gather(next_levels, 1, torch.searchsorted(thresholds, w.contiguous()))
                    ctx.sensitivity.add_(((q_next - q) * grad_q).sum(1))
                else:
                    ctx.sensitivity.add_(((w - q) * grad_q).sum(1))
        grad_w = grad_q * (w.abs() <= clip[:, None])
        return grad_w, None, None, None, None


class DMBQWeight(nn.Module):
    """Distribution-aware multi-bit binary weight quantizer, one code per group.

    Groups are output channels (conv) or rows (linear), or the whole tensor for
    layer granularity. Each group's clip is k_b * mean|w| and its levels come from
    the code-book entry its shape statistic mean|w| / rms(w) selects. Both
    statistics are exponential moving averages (decay 0.99) kept in saved buffers
    and initialised from the weights at construction, so evaluation of a fresh or
    reloaded model needs no training step. Keeping the EMA of mean|w| (not of the
    clip) makes a bit-width change take effect at once."""

    def __init__(self, weight: Tensor, groups: int, bits: int | Tensor = 4,
                 codebook: str = "lookup", momentum: float = 0.01):
        super().__init__()
        if weight.numel() % groups:
            raise ValueError(f"{weight.numel()} weights do not split into {groups} groups")
        book = build_codebook(codebook)
        self.codebook, self.groups, self.momentum = codebook, groups, momentum
        self.track: str | None = None
        w = weight.detach().reshape(groups, -1).float()
        mean_abs, shape = self._statistics(w)
        self.register_buffer("bits", _as_bits(bits, groups, 0, MAX_BITS, "weight_bits"))
        self.register_buffer("scale", mean_abs)
        self.register_buffer("shape_stat", shape)
        self.register_buffer("table_levels", book.levels.clone(), persistent=False)
        self.register_buffer("table_clip", book.clip_factor.clone(), persistent=False)
        self.register_buffer("shape_edges", book.shape_edges.clone(), persistent=False)
        # set by a BitAllocator; buffers (not saved) so that they follow model.to(device)
        self.register_buffer("step_sensitivity", None, persistent=False)
        self.register_buffer("sensitivity_sum", None, persistent=False)

    @torch.no_grad()
    def reset_statistics(self, weight: Tensor) -> None:
        """Restart the EMAs of mean|w| and shape from `weight` (after loading weights)."""
        mean_abs, shape = self._statistics(weight.detach().reshape(self.groups, -1).float())
        self.scale.copy_(mean_abs)
        self.shape_stat.copy_(shape)

    @staticmethod
    def _statistics(w: Tensor) -> tuple[Tensor, Tensor]:
        mean_abs = w.abs().mean(1)
        rms = w.pow(2).mean(1).sqrt()
        return mean_abs, mean_abs / rms.clamp_min(1e-12)

    def entries(self) -> Tensor:
        """Code-book entry (shape index) each group uses now."""
        return torch.bucketize(self.shape_stat, self.shape_edges)

    def code(self, bits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-group absolute levels [G, 16] (padded by repeating the top level) and
        clip c = k_b(shape) * mean|w| [G] (the largest level), one table lookup for both."""
        bits = self.bits if bits is None else bits
        entries = self.entries()
        clip = self.table_clip[bits, entries] * self.scale
        return self.table_levels[bits, entries] * clip[:, None], clip

    def forward(self, weight: Tensor) -> Tensor:
        w = weight.reshape(self.groups, -1)
        if self.training:
            with torch.no_grad():
                mean_abs, shape = self._statistics(w.float())
                self.scale.lerp_(mean_abs, self.momentum)
                self.shape_stat.lerp_(shape, self.momentum)
        sensitivity = self.step_sensitivity if self.track and torch.is_grad_enabled() else None
        next_levels = self.code((self.bits - 1).clamp_min(0))[0] if sensitivity is not None \
            and self.track == "next" else None
        levels, clip = self.code()
        q = _SnapToLevels.apply(w, levels.to(w.dtype), clip.to(w.dtype), sensitivity, next_levels)
        return q.reshape(weight.shape)

    def extra_repr(self) -> str:
        b = self.bits.float()
        return (f"groups={self.groups}, bits(mean/min/max)={b.mean():.2f}/{int(b.min())}/"
                f"{int(b.max())}, codebook={self.codebook}")


class Int8Weight(nn.Module):
    """Symmetric 8-bit weights (255 levels) scaled by max|w|, for first/last layers.

    Why separate: the spec keeps these layers at 8 bits outside the allocation, and
    max|w| of the current weights is exact and batch independent."""

    def __init__(self, groups: int):
        super().__init__()
        self.register_buffer("bits", torch.full((groups,), 8, dtype=torch.long))
        self.track = None

    def reset_statistics(self, weight: Tensor) -> None:
        """Nothing to reset: the scale is read from the current weights."""

    def forward(self, weight: Tensor) -> Tensor:
        step = weight.detach().abs().max().clamp_min(1e-12) / 127
        return weight + ((weight / step).round() * step - weight).detach()

    def extra_repr(self) -> str:
        return "bits=8 (symmetric, max|w|)"


# ------------------------------------------------------------------------- activations

class _UniformActQuant(torch.autograd.Function):
    """y = round(clamp(x / step, 0, n)) * step, step = clip / n, n = 2^b - 1 per channel.

    One function instead of an op chain: forward works in place on one buffer and
    saves only x (which the preceding ReLU holds anyway); backward recomputes the
    rest. Gradients: straight-through for x inside [0, clip]; for the clip,
    (y - x) / clip inside and 1 above (the exact derivative with round treated as
    identity). With `sensitivity` given, backward adds per channel
    sum (x - Q(x)) * dL/dQ (or, with `track_next`, sum (Q_{b-1} - Q_b) * dL/dQ).

    Speed (2 CPU cores, [128, 16, 32, 32]): in-place ops cost ~0.15 ms, a fresh
    buffer ~0.3-0.5 ms and more inside backward (its pages fault in), a boolean mask
    into `where` ~4 ms; hence in-place clamps, a float mask written in place, one
    buffer reused for the LBA term and the input gradient, and dot products for the
    clip gradient (results/step-speed.md has the whole-step effect)."""

    @staticmethod
    def forward(ctx, x, clip, n, sensitivity, track_next):
        y = _uniform_levels(x.float(), clip, n)
        if x.dtype != torch.float32:  # autocast: levels and rounding in fp32, handed on in x's dtype
            y = y.to(x.dtype)
        # y is saved too: the next layer keeps it for its own backward, so it is free
        ctx.save_for_backward(x, y, clip, n)
        ctx.sensitivity, ctx.track_next, ctx.in_dtype = sensitivity, track_next, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, y, clip, n = ctx.saved_tensors
        if x.dtype != torch.float32:
            # reduced precision (bf16 autocast): recompute the exact fp32 levels rather than
            # use the rounded ones, so that the clip gradient and the LBA sums stay fp32-exact
            x, grad_y = x.float(), grad_y.float()
            y = _uniform_levels(x, clip, n)
        clip_ = clip.to(x.dtype)
        n = n.to(x.dtype)
        reduce_dims = [d for d, s in enumerate(n.shape) if s == 1]

        def per_channel(t: Tensor) -> Tensor:
            return t.sum(reduce_dims, keepdim=True)
        # one full-size buffer for everything: first the LBA term (if tracked), then grad_x;
        # a second temporary per layer cost more in fresh pages than in arithmetic on 2 CPU cores
        buffer = torch.empty_like(x)
        if ctx.sensitivity is not None:
            with torch.no_grad():
                if ctx.track_next:  # Q at b-1 bits: n' = (n + 1) / 2 - 1 levels above zero
                    n_next = ((n + 1) / 2 - 1).clamp_min(0)
                    torch.mul(x, n_next / clip_, out=buffer).clamp_(min=0)
                    torch.minimum(buffer, n_next, out=buffer).round_().mul_(clip_ / n_next.clamp_min(1))
                    buffer.sub_(y)  # Q_{b-1} - Q_b
                else:
                    torch.sub(x, y, out=buffer)  # x - Q_b
                ctx.sensitivity.add_(per_channel(buffer.mul_(grad_y)).reshape(-1))
        # inside [0, clip] <=> |x - clip/2| <= clip/2; a pruned channel gets -1: never inside
        half = torch.where(n > 0, clip_ / 2, -1.0)
        grad_x = torch.sub(x, half, out=buffer).abs_().le_(half).mul_(grad_y)
        # d y / d clip = (y - x * inside) / clip: (y - x) / clip inside, 1 above, 0 below;
        # the two sums are whole-tensor dot products (one pass each, no temporary)
        grad_clip = (_dot(grad_y, y) - _dot(grad_x, x)) / clip_
        return grad_x.to(ctx.in_dtype), grad_clip.reshape(clip.shape), None, None, None


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b) in one pass without a temporary: a BLAS dot over the storage when both are
    dense with the same strides (contiguous or channels_last alike), else multiply and sum.

    Why: no full-size temporary; on 2 CPU cores (AMD EPYC, AVX2) at [128, 16, 32, 32] the dot
    was several times faster than the product and sum (a one-off measurement; the whole-step
    effect is in results/epoch-time-cpu.md)."""
    same_layout = a.shape == b.shape and a.stride() == b.stride()
    dense = a.is_contiguous() or (a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last))
    if same_layout and dense:
        return torch.dot(a.as_strided((a.numel(),), (1,)), b.as_strided((b.numel(),), (1,)))
    return (a * b).sum()


def _uniform_levels(x: Tensor, clip: Tensor, n: Tensor) -> Tensor:
    """round(clamp(x / step, 0, n)) * step for float32 `x`, step = clip / n, in place on one buffer."""
    n = n.to(x.dtype)
    y = x * (n / clip.to(x.dtype))
    y.clamp_(min=0)
    torch.minimum(y, n, out=y)
    return y.round_().mul_(clip.to(x.dtype) / n.clamp_min(1))  # the step; no 1/0 when n = 0


class UniformAct(nn.Module):
    """Unsigned uniform activation quantizer with a learnable clip per layer.

    Bits are held per input channel (0 bits prunes the channel). The clip starts
    at 3.0 as in the spec. `positions` records how many values one image gives
    each channel (H*W) at the last forward: the size weight of that channel in the
    average bit-width."""

    def __init__(self, channels: int, bits: int | Tensor = 4, channel_dim: int | None = 1,
                 init_clip: float = 3.0):
        super().__init__()
        self.channels, self.channel_dim = channels, channel_dim
        self.track: str | None = None
        self.act_clip = nn.Parameter(torch.tensor(float(init_clip)))
        self.register_buffer("bits", _as_bits(bits, channels, 0, MAX_ACT_BITS, "act_bits"))
        self.register_buffer("positions", torch.ones((), dtype=torch.long))
        # set by a BitAllocator; buffers (not saved) so that they follow model.to(device)
        self.register_buffer("step_sensitivity", None, persistent=False)
        self.register_buffer("sensitivity_sum", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        channel_shape = [1] * x.dim()
        if self.channel_dim is not None:  # None: one bit-width for the whole tensor
            dim = self.channel_dim % x.dim()
            if x.shape[dim] != self.channels:
                raise ValueError(f"expected {self.channels} channels in dim {dim}, got shape {tuple(x.shape)}")
            channel_shape[dim] = self.channels
        self.positions.fill_(x[0].numel() // self.channels)
        sensitivity = self.step_sensitivity if self.track and torch.is_grad_enabled() else None
        n_levels = (2 ** self.bits - 1).view(channel_shape)
        return _UniformActQuant.apply(x, self.act_clip, n_levels, sensitivity, self.track == "next")

    def extra_repr(self) -> str:
        b = self.bits.float()
        return (f"channels={self.channels}, bits(mean/min/max)={b.mean():.2f}/{int(b.min())}/"
                f"{int(b.max())}, act_clip={float(self.act_clip.detach()):.3f}")


class FloatAct(nn.Module):
    """Weight-only quantization (A32): the input passes unchanged.

    Why a module rather than nothing: every quantized layer then has the same parts; `bits`
    reads 32 for the tables, and `dambq.convert.average_bits` and `BitAllocator` leave such
    inputs out of the activation average (which reports 32 when no input is quantized)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels, self.track = channels, None
        self.register_buffer("bits", torch.full((channels,), FLOAT_BITS, dtype=torch.long))
        self.register_buffer("positions", torch.ones((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.positions.fill_(max(1, x[0].numel() // self.channels) if x.dim() > 1 else 1)
        return x

    def extra_repr(self) -> str:
        return "float input (weight-only quantization)"


class Int8Act(nn.Module):
    """8-bit asymmetric input quantizer with a tracked range, for first/last layers.

    The range [low, high] is an EMA of batch min/max during training, saved in
    buffers; evaluation uses only the stored range, never the current batch (V2's
    last layer used the batch max). Until a training step has tracked a range the
    input passes through unquantized."""

    def __init__(self, channels: int, momentum: float = 0.01):
        super().__init__()
        self.channels, self.momentum, self.track = channels, momentum, None
        self.register_buffer("bits", torch.full((channels,), 8, dtype=torch.long))
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("tracked", torch.zeros((), dtype=torch.bool))
        self.register_buffer("positions", torch.ones((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.positions.fill_(x[0].numel() // self.channels)
        if self.training:
            with torch.no_grad():
                low, high = x.detach().min().float(), x.detach().max().float()
                weight = torch.where(self.tracked, self.momentum, 1.0)
                self.low.lerp_(low, weight)
                self.high.lerp_(high, weight)
                self.tracked.fill_(True)
        xf = x.float()  # 255 levels need more than bf16's 8-bit mantissa: round in fp32
        step = (self.high - self.low).clamp_min(1e-8) / 255
        q = ((xf.clamp(self.low, self.high) - self.low) / step).round() * step + self.low
        inside = (xf >= self.low) & (xf <= self.high)
        y = torch.where(inside, xf + (q - xf).detach(), q.detach())
        return torch.where(self.tracked, y, xf).to(x.dtype)  # no host sync to ask whether tracked

    def extra_repr(self) -> str:
        return f"bits=8, range=[{float(self.low):.3f}, {float(self.high):.3f}]"
