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

Why one module of ~550 lines: the weight and activation quantizers share the bit-width
checks, the fp32-state rule and the sensitivity-tracking protocol that `BitAllocator`
reads (`track`, `step_sensitivity`); each family is a fused autograd function beside the
small module that owns its state.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .codebook import MAX_BITS, build_codebook, shape_statistic, snap

MAX_ACT_BITS = 8
FLOAT_BITS = 32  # what an unquantized (A32) input reads as in tables


def _check_bits(bits: Tensor, low: int, high: int, what: str) -> None:
    if bits.numel() and (int(bits.min()) < low or int(bits.max()) > high):
        raise ValueError(f"{what} must lie in {low}..{high}, got values in "
                         f"{int(bits.min())}..{int(bits.max())}")


def _as_bits(bits: int | Tensor, size: int, low: int, high: int, what: str) -> Tensor:
    """A LongTensor of `size` bit-widths from an int or a tensor, range-checked.

    Raises:
        ValueError: a non-integer bit-width (2.5 would silently become 2), a value out of
            low..high, or a count other than 1 or `size`."""
    bits = torch.as_tensor(bits)
    if bits.is_floating_point():
        if not torch.equal(bits, bits.round()):
            raise ValueError(f"{what} must be whole numbers of bits, got {bits.flatten().tolist()[:8]}")
    elif bits.dtype == torch.bool:
        raise ValueError(f"{what} must be whole numbers of bits, got booleans")
    bits = bits.long().flatten()
    if bits.numel() == 1:
        bits = bits.expand(size).clone()
    if bits.numel() != size:
        raise ValueError(f"{what}: expected 1 or {size} values, got {bits.numel()}")
    _check_bits(bits, low, high, what)
    return bits


class _Fp32State(nn.Module):
    """Keeps a quantizer's parameters and buffers in float32 under `model.half()` /
    `model.bfloat16()`: clips, ranges and weight statistics are few numbers whose
    precision decides the levels, and an EMA in half precision stalls (1 + 0.01 * d
    rounds to 1). Device moves still apply."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for table in (self._parameters, self._buffers):
            for name, t in table.items():
                if t is not None and t.is_floating_point() and t.dtype != torch.float32:
                    if isinstance(t, nn.Parameter):
                        t.data = t.data.float()
                    else:
                        table[name] = t.float()
        return self


# ----------------------------------------------------------------------------- weights

class _SnapToLevels(torch.autograd.Function):
    """Nearest of each row's levels; straight-through inside the clip.

    forward(w [G, n], levels [G, L] sorted, clip [G], sensitivity [G] or None,
    next_levels [G, L] or None). When `sensitivity` is given, backward adds
    sum_j (w - Q(w))_j * dL/dQ_j per group (or, with `next_levels`, the change
    the next lower bit-width would make, sum_j (Q_{b-1} - Q_b)_j * dL/dQ_j)."""

    @staticmethod
    def forward(ctx, w, levels, clip, sensitivity, next_levels, square=False):
        q = snap(w, levels)
        ctx.sensitivity, ctx.has_next, ctx.square = sensitivity, next_levels is not None, square
        ctx.save_for_backward(w, q, clip, next_levels if next_levels is not None else q)
        return q

    @staticmethod
    def backward(ctx, grad_q):
        w, q, clip, next_levels = ctx.saved_tensors
        if ctx.sensitivity is not None:
            with torch.no_grad():
                if ctx.has_next and ctx.square:  # second order: 0.5 * sum (g * dQ)^2, g^2 the Fisher diagonal
                    ctx.sensitivity.add_(((snap(w, next_levels) - q) * grad_q).square().sum(1) * 0.5)
                elif ctx.has_next:
                    ctx.sensitivity.add_(((snap(w, next_levels) - q) * grad_q).sum(1))
                else:
                    ctx.sensitivity.add_(((w - q) * grad_q).sum(1))
        grad_w = grad_q * (w.abs() <= clip[:, None])
        return grad_w, None, None, None, None, None


class DMBQWeight(_Fp32State):
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
        return shape_statistic(w)

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
            and self.track in ("next", "fisher") else None
        levels, clip = self.code()
        q = _SnapToLevels.apply(w, levels.to(w.dtype), clip.to(w.dtype), sensitivity, next_levels,
                                self.track == "fisher")
        return q.reshape(weight.shape)

    def extra_repr(self) -> str:
        b = self.bits.float()
        return (f"groups={self.groups}, bits(mean/min/max)={b.mean():.2f}/{int(b.min())}/"
                f"{int(b.max())}, codebook={self.codebook}")


class Int8Weight(_Fp32State):
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


class FloatWeight(_Fp32State):
    """Activation-only quantization (weight_bits=None): the weight passes unchanged.

    Why: measuring what activation quantization alone costs a model (results/model-zoo.md)
    needs float weights beside quantized inputs; `bits` reads 32 and such layers are left
    out of the weight average and of weight allocation."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups, self.track = groups, None
        self.register_buffer("bits", torch.full((groups,), FLOAT_BITS, dtype=torch.long))

    def reset_statistics(self, weight: Tensor) -> None:
        """Nothing to reset."""

    def forward(self, weight: Tensor) -> Tensor:
        return weight

    def extra_repr(self) -> str:
        return "float weights (activation-only quantization)"


# ------------------------------------------------------------------------- activations

@torch.library.custom_op("dambq::level_counts", mutates_args=())
def level_counts(bits: Tensor) -> Tensor:
    """n = 2^b - 1 per channel as float32: the number of steps of each channel's grid.

    Why an opaque op rather than `(2 ** bits - 1).float()`: torch.compile fuses that small
    per-channel arithmetic into the full-size quantizer kernels, so in channels_last every
    element converted its channel's int64 count to float again (no vector int64 -> float on
    AVX2). As an op of its own it is computed once per forward, and the compiled channels_last
    quantizer runs as fast as with float counts handed in (`python benchmarks/quantizer_kernel.py`,
    results/quantizer-kernel-*.md).

    Example:
        >>> level_counts(torch.tensor([0, 1, 4])).tolist()
        [0.0, 1.0, 15.0]
    """
    return (2 ** bits - 1).to(torch.float32)


@level_counts.register_fake
def _(bits: Tensor) -> Tensor:
    return torch.empty(bits.shape, dtype=torch.float32, device=bits.device)


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
    into `where` ~4 ms; hence, in eager mode, in-place clamps, a float mask written in
    place, one buffer reused for the LBA term and the input gradient, and dot products
    for the clip gradient (results/step-speed.md has the whole-step effect). Under
    torch.compile the backward is written as plain ops instead, which inductor fuses
    (`_uniform_grads_fusible`). `clip` is a scalar or,
    for ranges per channel, shaped like `n` (one clip per channel, gradients per channel)."""

    @staticmethod
    def forward(ctx, x, clip, n, sensitivity, track_next, square=False):
        y = _uniform_levels(x.float(), clip, n)
        if x.dtype != torch.float32:  # autocast: levels and rounding in fp32, handed on in x's dtype
            y = y.to(x.dtype)
        # y is saved too: the next layer keeps it for its own backward, so it is free
        ctx.save_for_backward(x, y, clip, n)
        ctx.sensitivity, ctx.track_next, ctx.in_dtype, ctx.square = sensitivity, track_next, x.dtype, square
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, y, clip, n = ctx.saved_tensors
        if x.dtype != torch.float32:
            # reduced precision (bf16 autocast): recompute the exact fp32 levels rather than
            # use the rounded ones, so that the clip gradient and the LBA sums stay fp32-exact
            x, grad_y = x.float(), grad_y.float()
            y = _uniform_levels(x, clip, n)
        grads = _uniform_grads_fusible if torch.compiler.is_compiling() else _uniform_grads_inplace
        grad_x, grad_clip = grads(x, y, grad_y, clip.to(x.dtype), n.to(x.dtype), ctx.sensitivity,
                                  ctx.track_next, ctx.square)
        return grad_x.to(ctx.in_dtype), grad_clip.reshape(clip.shape), None, None, None, None


def _reduce_dims(n: Tensor) -> list[int]:
    """The dims a per-channel sum runs over: those where the level counts `n` broadcast."""
    return [d for d, s in enumerate(n.shape) if s == 1]


def _uniform_grads_inplace(x: Tensor, y: Tensor, grad_y: Tensor, clip: Tensor, n: Tensor,
                           sensitivity: Tensor | None, track_next: bool, square: bool) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_clip) of `_UniformActQuant` for eager mode, adding the LBA term to `sensitivity`.

    Why in place: eager runs every op as its own pass, so the fewest fresh buffers win. One
    full-size buffer serves first the LBA term (if tracked), then grad_x; a second temporary per
    layer cost more in fresh pages than in arithmetic on 2 CPU cores; the clip gradient's sums
    are BLAS dot products (`_dot`)."""
    reduce_dims = _reduce_dims(n)
    buffer = torch.empty_like(x)
    if sensitivity is not None:
        with torch.no_grad():
            if track_next:  # Q at b-1 bits: n' = (n + 1) / 2 - 1 levels above zero
                n_next = ((n + 1) / 2 - 1).clamp_min(0)
                torch.mul(x, n_next / clip, out=buffer).clamp_(min=0)
                torch.minimum(buffer, n_next, out=buffer).round_().mul_(clip / n_next.clamp_min(1))
                buffer.sub_(y)  # Q_{b-1} - Q_b
            else:
                torch.sub(x, y, out=buffer)  # x - Q_b
            buffer.mul_(grad_y)
            if square:  # second order: 0.5 * sum (g * dQ)^2
                buffer.square_().mul_(0.5)
            sensitivity.add_(buffer.sum(reduce_dims, keepdim=True).reshape(-1))
    # inside [0, clip] <=> |x - clip/2| <= clip/2; a pruned channel gets -1: never inside
    half = torch.where(n > 0, clip / 2, -1.0)
    grad_x = torch.sub(x, half, out=buffer).abs_().le_(half).mul_(grad_y)
    # d y / d clip = (y - x * inside) / clip: (y - x) / clip inside, 1 above, 0 below;
    # one clip: the two sums are whole-tensor dot products (one pass each, no temporary)
    if clip.numel() == 1:
        grad_clip = (_dot(grad_y, y) - _dot(grad_x, x)) / clip
    else:  # a clip per channel (act_range="channel"): the same sums per channel
        grad_clip = ((grad_y * y).sum(reduce_dims, keepdim=True) - (grad_x * x).sum(reduce_dims, keepdim=True)) / clip
    return grad_x, grad_clip


def _uniform_grads_fusible(x: Tensor, y: Tensor, grad_y: Tensor, clip: Tensor, n: Tensor,
                           sensitivity: Tensor | None, track_next: bool, square: bool) -> tuple[Tensor, Tensor]:
    """The same gradients and LBA term as `_uniform_grads_inplace`, as plain out-of-place ops.

    Why a second form: under torch.compile, inductor fuses these into a pass or two over x, y and
    grad_y, with the sums as reductions inside the same kernels; the eager form's `out=` buffer
    and BLAS dot products are opaque to it and cost a pass each (`python
    benchmarks/quantizer_kernel.py`, results/quantizer-kernel-*.md)."""
    reduce_dims = _reduce_dims(n)
    if sensitivity is not None:
        with torch.no_grad():
            if track_next:
                n_next = ((n + 1) / 2 - 1).clamp_min(0)
                other = (x * (n_next / clip)).clamp(min=0).minimum(n_next).round() * (clip / n_next.clamp_min(1)) - y
            else:
                other = x - y
            term = other * grad_y
            if square:
                term = term.square() * 0.5
            sensitivity.add_(term.sum(reduce_dims, keepdim=True).reshape(-1))
    half = torch.where(n > 0, clip / 2, -1.0)
    inside = (x - half).abs() <= half
    grad_x = grad_y * inside
    clip_term = grad_y * (y - x * inside)
    grad_clip = (clip_term.sum() if clip.numel() == 1 else clip_term.sum(reduce_dims, keepdim=True)) / clip
    return grad_x, grad_clip


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


class _SignedActQuant(torch.autograd.Function):
    """y = low + round(clamp((x - low) / step, 0, n)) * step, step = (high - low) / n per channel.

    The signed (asymmetric) form of `_UniformActQuant` for inputs that go negative (SiLU,
    GELU, Tanh, residual streams, attention): 2^b levels from `low` to `high`, so a b-bit
    channel still costs b bits. n = 0 prunes the channel (output 0). Gradients, with round
    treated as identity: straight-through for x inside [low, high]; dy/dhigh = (y - x) /
    (high - low) inside and 1 above; dy/dlow = -(y - x) / (high - low) inside and 1 below.
    Sensitivity tracking as in `_UniformActQuant`; `low` and `high` are scalars or shaped
    like `n` (a range per channel). Written as plain ops: it runs on the
    models that need it, not on the ReLU ResNets whose step time is benchmarked."""

    @staticmethod
    def forward(ctx, x, low, high, n, sensitivity, track_next, square=False):
        y = _signed_levels(x.float(), low, high, n)
        ctx.save_for_backward(x, low, high, n)
        ctx.sensitivity, ctx.track_next, ctx.in_dtype, ctx.square = sensitivity, track_next, x.dtype, square
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, low, high, n = ctx.saved_tensors
        x, grad_y = x.float(), grad_y.float()
        lo, hi = low.float(), high.float()
        y = _signed_levels(x, lo, hi, n)
        reduce_dims = _reduce_dims(n)
        if ctx.sensitivity is not None:
            with torch.no_grad():
                if ctx.track_next:
                    other = _signed_levels(x, lo, hi, ((n + 1) // 2 - 1).clamp_min(0)) - y
                else:
                    other = x - y
                term = other * grad_y
                if ctx.square:  # second order: 0.5 * sum (g * dQ)^2
                    term = term.square() * 0.5
                ctx.sensitivity.add_(term.sum(reduce_dims, keepdim=True).reshape(-1))
        live = n > 0
        inside = (x >= lo) & (x <= hi) & live
        span = (hi - lo).clamp_min(1e-8)
        grad_x = grad_y * inside

        def total(t: Tensor) -> Tensor:  # one range: whole-tensor sums; a range per channel: per channel
            return t.sum() if lo.numel() == 1 else t.sum(reduce_dims, keepdim=True)
        inner = total(grad_x * (y - x)) / span
        grad_high = inner + total(grad_y * ((x > hi) & live))
        grad_low = -inner + total(grad_y * ((x < lo) & live))
        return (grad_x.to(ctx.in_dtype), grad_low.reshape(low.shape).to(low.dtype),
                grad_high.reshape(high.shape).to(high.dtype), None, None, None, None)


def _signed_levels(x: Tensor, low: Tensor, high: Tensor, n: Tensor) -> Tensor:
    """low + round(clamp((x - low) / step, 0, n)) * step, 0 where n = 0 (fp32 x)."""
    n = n.to(x.dtype)
    step = (high - low).clamp_min(1e-8) / n.clamp_min(1)
    y = ((x - low) / step).clamp_(min=0)
    torch.minimum(y, n, out=y)
    return (y.round_().mul_(step).add_(low)).mul_(n > 0)


SIGN_MODES = {"unsigned": 0, "asymmetric": 1, "symmetric": 2}


class UniformAct(_Fp32State):
    """Uniform activation quantizer with learnable clip(s), unsigned or signed.

    Unsigned (inputs after ReLU, the paper's case): 2^b levels on [0, act_clip]. Signed
    (inputs that go negative): 2^b levels on [act_low, act_clip], both learnable
    ("asymmetric", the default: SiLU and GELU inputs reach only about -0.3 below zero, so a
    symmetric range would waste most of its negative levels; results/model-zoo.md compares
    the two), or on [-act_clip, act_clip] ("symmetric"). `dambq.calibrate_act_clips` makes a
    quantizer signed when it sees negative inputs (convert's act_signed="auto").

    Bits are held per input channel (0 bits prunes the channel), or one for the whole input
    (channels=1). The range is one per layer, as in the paper, or one per input channel
    (`range_per_channel`, convert's act_range="channel"): networks whose channels differ in
    scale by orders of magnitude (squeeze-excitation, depthwise convolutions) cannot reach a
    small 8-bit error with one range (results/layer-ablation.md). `channel_dim` counts from the end (-3 for Conv2d, -1 for Linear) so that
    an unbatched (C, H, W) input is read correctly. `positions` records how many values one
    image gives each channel at the last forward: the size weight of that channel in the
    average bit-width.

    Example:
        >>> q = UniformAct(channels=2, bits=2, channel_dim=-3, init_clip=3.0)
        >>> q(torch.tensor([[[[-1.0]], [[1.2]]]])).flatten().tolist()
        [0.0, 1.0]
        >>> q.make_signed(low=-3.0)
        >>> q(torch.tensor([[[[-1.0]], [[1.2]]]])).flatten().tolist()
        [-1.0, 1.0]
    """

    def __init__(self, channels: int, bits: int | Tensor = 4, channel_dim: int | None = -3,
                 init_clip: float = 3.0, signed: bool | str = False, range_per_channel: bool = False):
        super().__init__()
        self.channels, self.channel_dim = channels, channel_dim
        self.track: str | None = None
        self.sign_mode = "unsigned"
        self.act_clip = nn.Parameter(torch.tensor(float(init_clip)))
        self.register_buffer("bits", _as_bits(bits, channels, 0, MAX_ACT_BITS, "act_bits"))
        self.register_buffer("positions", torch.ones((), dtype=torch.long))
        # set by a BitAllocator; buffers (not saved) so that they follow model.to(device)
        self.register_buffer("step_sensitivity", None, persistent=False)
        self.register_buffer("sensitivity_sum", None, persistent=False)
        if range_per_channel:
            self.make_range_per_channel()
        if signed:
            self.make_signed(symmetric=signed == "symmetric")

    @property
    def signed(self) -> bool:
        return self.sign_mode != "unsigned"

    @property
    def range_per_channel(self) -> bool:
        """Whether each input channel has its own range (act_clip, and act_low, are [channels])."""
        return self.act_clip.dim() == 1

    def make_range_per_channel(self) -> None:
        """Give every input channel its own range, each starting at the layer's current one.

        Call before the optimizer is built (the clip parameters are replaced).

        Raises:
            ValueError: one channel only (layer granularity, or channel_dim None): a range per
                channel needs the channel dim that the per-channel bits are read along."""
        if self.range_per_channel:
            return
        if self.channels == 1 or self.channel_dim is None:
            raise ValueError("a range per input channel needs per-channel bits (granularity='channel'); this "
                             "quantizer holds one bit-width for its whole input")
        self.act_clip = nn.Parameter(self.act_clip.detach().expand(self.channels).clone())
        if getattr(self, "act_low", None) is not None:
            self.act_low = nn.Parameter(self.act_low.detach().expand(self.channels).clone())

    def make_signed(self, low: float | Tensor | None = None, high: float | Tensor | None = None,
                    symmetric: bool = False) -> None:
        """Switch to the signed quantizer, optionally setting its range (low ignored if symmetric;
        a tensor of one value per channel where the range is per channel).

        Call before the optimizer is built: the asymmetric form adds a parameter (act_low)."""
        mode = "symmetric" if symmetric else "asymmetric"
        if self.signed and mode != self.sign_mode:
            raise ValueError(f"quantizer is already {self.sign_mode}; cannot make it {mode}")
        self.sign_mode = mode
        if "sign" not in self._buffers:
            self.register_buffer("sign", torch.tensor(SIGN_MODES[mode]))
        clip = self.act_clip.detach()
        if high is not None:
            clip.copy_(torch.as_tensor(high, dtype=clip.dtype).expand_as(clip))
        if not symmetric:
            if not hasattr(self, "act_low") or self.act_low is None:
                self.act_low = nn.Parameter(-clip.clone())
            if low is not None:
                self.act_low.detach().copy_(torch.as_tensor(low, dtype=clip.dtype).expand_as(clip))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint with a range per channel, or a signed one, loads into a freshly converted
        # model (one unsigned range per layer): switch first
        saved_clip = state_dict.get(prefix + "act_clip")
        if saved_clip is not None and saved_clip.dim() == 1 and not self.range_per_channel:
            self.make_range_per_channel()
        sign = state_dict.get(prefix + "sign")
        if sign is not None and not self.signed:
            self.make_signed(symmetric=int(sign) == SIGN_MODES["symmetric"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def range(self) -> tuple[Tensor, Tensor]:
        """(low, high) of the levels: low is 0 unsigned, -act_clip symmetric, act_low asymmetric."""
        if self.sign_mode == "asymmetric":
            return self.act_low, self.act_clip
        if self.sign_mode == "symmetric":
            return -self.act_clip, self.act_clip
        return torch.zeros_like(self.act_clip), self.act_clip

    def forward(self, x: Tensor) -> Tensor:
        channel_shape = [1] * x.dim()
        if self.channel_dim is None:  # legacy: one bit-width, the batch in dim 0
            per_image = x[0].numel() if x.dim() > 1 else x.numel()
        else:
            dim = self.channel_dim % x.dim()
            if self.channel_dim < -x.dim():
                raise ValueError(f"expected an input with a channel dim {self.channel_dim}, got shape "
                                 f"{tuple(x.shape)}")
            # an image is everything from the channel dim on (conv) or all but dim 0 (linear)
            first = dim if dim < x.dim() - 1 else min(1, x.dim() - 1)
            per_image = math.prod(x.shape[first:])
            if self.channels > 1:
                if x.shape[dim] != self.channels:
                    raise ValueError(f"expected {self.channels} channels in dim {dim}, got shape {tuple(x.shape)}")
                channel_shape[dim] = self.channels
        self.positions.fill_(max(1, per_image // self.channels))
        sensitivity = self.step_sensitivity if self.track and torch.is_grad_enabled() else None
        n_levels = level_counts(self.bits).view(channel_shape)
        track_next, square = self.track in ("next", "fisher"), self.track == "fisher"
        if self.signed:
            low, high = self.range()
            if self.range_per_channel:
                low, high = low.view(channel_shape), high.view(channel_shape)
            return _SignedActQuant.apply(x, low, high, n_levels, sensitivity, track_next, square)
        clip = self.act_clip.view(channel_shape) if self.range_per_channel else self.act_clip
        return _UniformActQuant.apply(x, clip, n_levels, sensitivity, track_next, square)

    def extra_repr(self) -> str:
        b = self.bits.float()
        low, high = (t.detach() for t in self.range())
        span = (f"range=[{float(low):.3f}, {float(high):.3f}]" if not self.range_per_channel else
                f"ranges per channel, low {float(low.min()):.3f}..{float(low.max()):.3f}, "
                f"high {float(high.min()):.3f}..{float(high.max()):.3f}")
        return (f"channels={self.channels}, bits(mean/min/max)={b.mean():.2f}/{int(b.min())}/"
                f"{int(b.max())}, {self.sign_mode}, {span}")


class FloatAct(_Fp32State):
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


class Int8Act(_Fp32State):
    """8-bit asymmetric input quantizer with a tracked range, for first/last layers.

    The range [low, high] is an EMA of batch min/max during training, saved in
    buffers; evaluation uses only the stored range, never the current batch (V2's
    last layer used the batch max). Until a training step or `dambq.calibrate_act_clips`
    has tracked a range the input passes through unquantized."""

    def __init__(self, channels: int, momentum: float = 0.01):
        super().__init__()
        self.channels, self.momentum, self.track = channels, momentum, None
        self.register_buffer("bits", torch.full((channels,), 8, dtype=torch.long))
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("tracked", torch.zeros((), dtype=torch.bool))
        self.register_buffer("positions", torch.ones((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, x: Tensor, momentum: float | None = None) -> None:
        """Move the range towards x's finite min/max (the first observation sets it).

        Non-finite values are left out, and a batch without finite values changes nothing:
        one inf would otherwise make the range infinite and every later output NaN. No host
        synchronisation (the update is a `where`)."""
        xf = x.detach().float()
        finite = torch.isfinite(xf)
        low = torch.where(finite, xf, torch.inf).amin()
        high = torch.where(finite, xf, -torch.inf).amax()
        ok = torch.isfinite(low) & torch.isfinite(high)
        weight = torch.where(self.tracked, self.momentum if momentum is None else momentum, 1.0)
        weight = torch.where(ok, weight, 0.0)
        self.low.lerp_(torch.where(ok, low, self.low), weight)
        self.high.lerp_(torch.where(ok, high, self.high), weight)
        self.tracked.logical_or_(ok)

    def forward(self, x: Tensor) -> Tensor:
        self.positions.fill_(max(1, (x[0].numel() if x.dim() > 1 else x.numel()) // self.channels))
        if self.training:
            with torch.no_grad():
                self.observe(x)
        xf = x.float()  # 255 levels need more than bf16's 8-bit mantissa: round in fp32
        step = (self.high - self.low).clamp_min(1e-8) / 255
        q = ((xf.clamp(self.low, self.high) - self.low) / step).round() * step + self.low
        inside = (xf >= self.low) & (xf <= self.high)
        y = torch.where(inside, xf + (q - xf).detach(), q.detach())
        return torch.where(self.tracked, y, xf).to(x.dtype)  # no host sync to ask whether tracked

    def extra_repr(self) -> str:
        return f"bits=8, range=[{float(self.low):.3f}, {float(self.high):.3f}]"
