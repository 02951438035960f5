"""Deployable multi-bit binary models: a packed file and a bit-plane forward.

DAMBQ's weights are sums of binary planes: a group at b bits holds
``clip * sum_i a_i s_i`` with ``s_i = +-1`` (spec section 1), so it can be stored as b bits
per weight plus a code-book entry and a clip per group, and computed as b binary products.
`save_packed` writes a converted model that way:

- each allocatable conv/linear: its sign planes packed 8 per byte, for each group only as
  many planes as its own bit-width (0-bit groups cost nothing); per group the code-book
  entry (one byte) and clip (fp32), and once per layer the code-book's coefficients; a
  BatchNorm that directly follows (and nothing else reads the conv) folded into the clips
  and the bias, exact in evaluation (any other BatchNorm as an fp16 scale and shift);
- the fixed 8-bit layers as int8 weights and one scale;
- every input quantizer as its range, sign mode and per-channel bits;
- an nn.MultiheadAttention (converted) as one module with its in/out projections packed
  (its forward branches on its inputs, so it is a leaf of the graph);
- the graph, traced by torch.fx, so that `load_packed` needs neither the float model nor
  its Python class: only torch and dambq.

`load_packed` returns a module whose quantized layers compute, per plane, a convolution of
the integer activation levels with the +-1 plane, scaled per group: the same function as
the fake-quantized model's evaluation (tests/test_export.py checks both, and the exact
integer form). Sizes: `python benchmarks/export_sizes.py` -> results/export.md.

Example:
    >>> import dambq, torch, tempfile, os
    >>> from dambq.models import build_model
    >>> _ = torch.manual_seed(0)
    >>> q = dambq.convert(build_model("resnet20"), weight_bits=2, act_bits=2).eval()
    >>> path = os.path.join(tempfile.mkdtemp(), "r20.dambq")
    >>> sizes = save_packed(q, path)
    >>> x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> packed, fake = load_packed(path)(x), q(x).detach()
    >>> float((packed - fake).norm() / fake.norm()) < 5e-2
    True

    The two agree to float rounding (about 1e-7 here), except that an activation sitting on a
    rounding boundary may land one level apart, and the CPU's convolution kernels decide which
    do: one such flip moves this random model's two logit rows by about 1 % (seen in CI, not on
    the CPU that wrote the example); tests/test_export.py checks 1e-4 on inputs without flips.

Why ~490 lines: the packed format and the forward that reads it change together; a
version bump touches both.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import tempfile
import zlib
from pathlib import Path

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import QuantMultiheadAttention
from .codebook import build_codebook, snap_index
from .convert import quant_layers
from .quantizers import DMBQWeight, FloatAct, FloatWeight, Int8Act, Int8Weight, level_counts

FORMAT = "dambq-packed"
MAGIC = b"DAMBQ-PACKED\n"
VERSION = 1
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class PackedFormatError(RuntimeError):
    """A file that is not a packed dambq model, from another format version, or damaged."""


# ------------------------------------------------------------------------------- bits

def pack_bits(signs: Tensor) -> Tensor:
    """+-1 (or bool) values -> uint8, 8 per byte, little-endian within a byte; pads with 0s.

    Example:
        >>> pack_bits(torch.tensor([1, -1, -1, 1, 1, 1, 1, 1, -1])).tolist()
        [249, 0]
    """
    bits = (signs.flatten() > 0).to(torch.uint8)
    bits = F.pad(bits, (0, (-bits.numel()) % 8))
    weights = 2 ** torch.arange(8, dtype=torch.uint8)
    return (bits.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, count: int) -> Tensor:
    """uint8 from `pack_bits` -> `count` values of +-1 (float32)."""
    bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
    return bits.flatten()[:count].float() * 2 - 1


def _sign_patterns(coefs: Tensor, bits: int) -> Tensor:
    """The sign patterns [2^b, b] of the code sum_i a_i s_i, in the order of its sorted levels
    (the order `snap_index` counts in)."""
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)), dtype=torch.float64)
    return signs[torch.argsort(signs @ coefs[:bits].double(), stable=True)]


# ------------------------------------------------------------------------- the layers

class PackedAct(nn.Module):
    """Input quantizer of a packed layer: integer levels times a step (plus the low end).

    `integers(x)` gives the levels (what an integer kernel would consume) and the step per
    channel that maps them back; forward returns levels * step + low, equal to the fake
    quantizer's evaluation (an 8-bit input: Int8Act's own rounding)."""

    def __init__(self, low: Tensor, high: Tensor, bits: Tensor, channel_dim: int | None, kind: str):
        super().__init__()
        self.channel_dim, self.kind = channel_dim, kind
        # one range per layer (a scalar each) or one per input channel (act_range="channel")
        self.register_buffer("low", low.float().reshape(()) if low.numel() == 1 else low.float().flatten())
        self.register_buffer("high", high.float().reshape(()) if high.numel() == 1 else high.float().flatten())
        self.register_buffer("bits", bits.to(torch.uint8))

    def __reduce__(self):  # only what rebuilds it: a module's dict of hooks costs more than its numbers
        return PackedAct, (self.low, self.high, self.bits, self.channel_dim, self.kind)

    @classmethod
    def from_quantizer(cls, q: nn.Module) -> "PackedAct | None":
        if isinstance(q, FloatAct):
            return None
        if isinstance(q, Int8Act) and not bool(q.tracked):  # no range yet: it passes inputs on, so does this
            return None
        if isinstance(q, Int8Act):
            return cls(q.low.detach(), q.high.detach(), torch.full((1,), 8), None, "int8")
        low, high = (t.detach() for t in q.range())
        return cls(low, high, q.bits, q.channel_dim if q.channels > 1 else None, q.sign_mode)

    def _per_channel(self, t: Tensor, x: Tensor) -> Tensor:
        """`t` (one value, or one per channel) shaped to broadcast against `x`."""
        if self.channel_dim is None or t.numel() == 1:
            return t
        shape = [1] * x.dim()
        shape[self.channel_dim % x.dim()] = -1
        return t.view(shape)

    def _levels(self, x: Tensor) -> Tensor:
        return self._per_channel(level_counts(self.bits.long()), x)

    def integers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(integer levels of x as float, step broadcastable to x), with the fake quantizers'
        own arithmetic (`quantizers._uniform_levels`, `_signed_levels`), so that they agree exactly."""
        n = self._levels(x)
        low, high = self._per_channel(self.low, x), self._per_channel(self.high, x)
        if self.kind == "unsigned":
            levels = (x.float() * (n / high)).clamp(min=0).minimum(n).round()
            return levels, high / n.clamp_min(1) * (n > 0)
        step = (high - low).clamp_min(1e-8) / n.clamp_min(1)
        return ((x.float() - low) / step).clamp(min=0).minimum(n).round(), step * (n > 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "int8":  # Int8Act's rounding, in fp32
            step = (self.high - self.low).clamp_min(1e-8) / 255
            return (((x.float().clamp(self.low, self.high) - self.low) / step).round() * step + self.low).to(x.dtype)
        levels, step = self.integers(x)
        low = 0.0 if self.kind == "unsigned" else self._per_channel(self.low, x)
        return (levels * step + low * (step > 0)).to(x.dtype)

    def extra_repr(self) -> str:
        if self.high.numel() > 1:
            return f"{self.kind}, ranges per channel, high {float(self.high.min()):.3f}..{float(self.high.max()):.3f}"
        return f"{self.kind}, range=[{float(self.low):.3f}, {float(self.high):.3f}]"


class PackedLayer(nn.Module):
    """A conv or linear whose weight is stored as packed sign planes (or int8), with a bit-plane forward.

    Buffers: `planes` (uint8, every group's planes, group after group), `group_bits`
    (uint8 [G]), `entry` (uint8 [G], a row of `coefs`), `clip` (fp32 [G], BatchNorm scale
    folded in), `coefs` (fp32 [rows, MAX_BITS]: the code-book's coefficients for the
    (bits, shape entry) pairs this layer uses), `bias`; for an 8-bit layer `int8` and
    `scale` instead."""

    def __init__(self, kind: str, weight_shape: tuple[int, ...], conv_args: dict | None,
                 act: PackedAct | None):
        super().__init__()
        self.kind, self.weight_shape, self.conv_args, self.act = kind, tuple(weight_shape), conv_args, act

    def __reduce__(self):  # only what rebuilds it (see PackedAct.__reduce__); the unpacked cache is not saved
        return _rebuild_layer, (self.kind, self.weight_shape, self.conv_args, self.act, dict(self._buffers))

    @classmethod
    def from_layer(cls, layer: nn.Module) -> "PackedLayer":
        if isinstance(layer.weight_quant, FloatWeight):
            raise ValueError("a layer with float weights (weight_bits=None) has nothing to pack")
        conv_args = None
        if isinstance(layer, nn.modules.conv._ConvNd):
            if layer.padding_mode != "zeros":
                raise ValueError(f"padding_mode {layer.padding_mode!r} is not supported by the packed format")
            conv_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                         "groups": layer.groups}
        packed = cls("conv" if conv_args else "linear", layer.weight.shape, conv_args,
                     PackedAct.from_quantizer(layer.act_quant))
        w = layer.weight.detach().float()
        bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(w.shape[0])
        packed.register_buffer("bias", bias.clone())
        quant = layer.weight_quant
        if isinstance(quant, Int8Weight):
            step = w.abs().max().clamp_min(1e-12) / 127
            packed.register_buffer("int8", (w / step).round().to(torch.int8))
            packed.register_buffer("scale", step.reshape(()))
            return packed
        if not isinstance(quant, DMBQWeight) or quant.groups != w.shape[0]:
            raise ValueError("only channel-granularity DMBQ layers are packed (one group per output channel)")
        book = build_codebook(quant.codebook)
        groups = w.reshape(quant.groups, -1)
        levels, clip = quant.code()
        entries = quant.entries()
        planes = []
        for g in range(quant.groups):
            b = int(quant.bits[g])
            if b == 0:
                continue
            signs = _sign_patterns(book.coefs[b, int(entries[g])], b)
            index = snap_index(groups[g:g + 1], levels[g:g + 1, : 2 ** b])[0]
            for i in range(b):
                planes.append(pack_bits(signs[index, i]))
        # the code-book rows this layer uses, once each; `entry` indexes them
        pairs = torch.stack([quant.bits, entries], 1)
        used, entry = torch.unique(pairs, dim=0, return_inverse=True)
        packed.register_buffer("planes", torch.cat(planes) if planes else torch.zeros(0, dtype=torch.uint8))
        packed.register_buffer("group_bits", quant.bits.to(torch.uint8))
        packed.register_buffer("entry", entry.to(torch.uint8))
        packed.register_buffer("clip", clip.float())
        packed.register_buffer("coefs", book.coefs[used[:, 0], used[:, 1]].float())  # [used rows, MAX_BITS]
        return packed

    def fold_batchnorm(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """y = s * conv(x) + t with s = gamma / sqrt(var + eps): s goes into the clips (or the int8
        scale's per-channel form) and the bias; exact in evaluation, where BN is affine."""
        s = (bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)) / (bn.running_var + bn.eps).sqrt()
        t = (bn.bias.detach() if bn.affine else torch.zeros_like(s)) - bn.running_mean * s
        self.bias.mul_(s).add_(t)
        if hasattr(self, "clip"):
            self.clip.mul_(s)
        else:
            self.register_buffer("channel_scale", s.float().clone())

    def plane_weights(self) -> tuple[Tensor, Tensor]:
        """(planes [P, *weight_shape] as +-1, 0 where a group has fewer than i+1 planes;
        alpha [P, G] = clip * a_i per group), P = the largest bit-width. Unpacked once, kept."""
        cached = getattr(self, "_unpacked", None)
        if cached is not None and cached[0].device == self.planes.device:
            return cached
        groups, per_group = self.weight_shape[0], math.prod(self.weight_shape[1:])
        nbytes = (per_group + 7) // 8
        bits = self.group_bits.long()
        depth = int(bits.max()) if bits.numel() else 0
        alpha = (self.coefs[self.entry.long()] * self.clip[:, None]).T[:depth]  # [P, G]
        first = (torch.cumsum(bits, 0) - bits) * nbytes  # byte offset of each group's first plane
        g, i = torch.nonzero(torch.arange(depth, device=bits.device)[None, :] < bits[:, None], as_tuple=True)
        index = (first[g] + i * nbytes)[:, None] + torch.arange(nbytes, device=bits.device)
        signs = ((self.planes[index].unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=bits.device)) & 1)
        signs = signs.flatten(1)[:, :per_group].float() * 2 - 1
        planes = torch.zeros(depth, groups, per_group, device=self.planes.device)
        planes[i, g] = signs
        self._unpacked = (planes.reshape(depth, *self.weight_shape), alpha)
        return self._unpacked

    def _product(self, x: Tensor, weight: Tensor) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, weight)
        return _CONV[len(self.weight_shape) - 2](x, weight, None, **self.conv_args)

    def _channel(self, t: Tensor) -> Tensor:
        """A per-output-channel vector shaped to broadcast over the layer's output."""
        return t if self.kind == "linear" else t.view(-1, *[1] * (len(self.weight_shape) - 2))

    def forward(self, x: Tensor) -> Tensor:
        xq = (self.act(x) if self.act is not None else x).float()
        if hasattr(self, "int8"):
            y = self._product(xq, self.int8.float() * self.scale)
            if hasattr(self, "channel_scale"):
                y = y * self._channel(self.channel_scale)
        else:
            planes, alpha = self.plane_weights()
            y = self._product(xq, torch.zeros(self.weight_shape, device=xq.device)) if not len(planes) else None
            for plane, a in zip(planes, alpha):  # one +-1 product per plane, scaled per group
                part = self._product(xq, plane) * self._channel(a)
                y = part if y is None else y + part
        return (y + self._channel(self.bias)).to(x.dtype)

    def extra_repr(self) -> str:
        what = "int8" if hasattr(self, "int8") else f"{self.planes.numel()} bytes of sign planes"
        return f"{self.kind}, weight {tuple(self.weight_shape)}, {what}"


def _rebuild_layer(kind, weight_shape, conv_args, act, buffers) -> PackedLayer:
    layer = PackedLayer(kind, weight_shape, conv_args, act)
    for name, tensor in buffers.items():
        layer.register_buffer(name, tensor)
    return layer


# ------------------------------------------------------------------------- the model

# Stateless modules become function calls in the saved graph: each module object would cost
# more bytes than a 2-bit ResNet20's planes of a whole layer. Others are kept as modules.
FUNCTIONAL: dict[type, callable] = {
    nn.ReLU: lambda m: (F.relu, {}), nn.ReLU6: lambda m: (F.relu6, {}), nn.SiLU: lambda m: (F.silu, {}),
    nn.GELU: lambda m: (F.gelu, {"approximate": m.approximate}), nn.Sigmoid: lambda m: (torch.sigmoid, {}),
    nn.Tanh: lambda m: (torch.tanh, {}), nn.Hardswish: lambda m: (F.hardswish, {}),
    nn.Hardsigmoid: lambda m: (F.hardsigmoid, {}),
    nn.Flatten: lambda m: (torch.flatten, {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    nn.AdaptiveAvgPool2d: lambda m: (F.adaptive_avg_pool2d, {"output_size": m.output_size}),
    nn.AvgPool2d: lambda m: (F.avg_pool2d, {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                                           "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad,
                                           "divisor_override": m.divisor_override}),
    nn.MaxPool2d: lambda m: (F.max_pool2d, {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                                           "dilation": m.dilation, "ceil_mode": m.ceil_mode}),
    nn.Identity: lambda m: None, nn.Dropout: lambda m: None,  # evaluation: pass the input on
}


class _Tracer(torch.fx.Tracer):
    """torch.fx tracer that keeps the packed layers whole (they are the graph's leaves)."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        # attention stays one module (its forward branches on its inputs), its projections packed
        leaf = (PackedLayer, PackedAct, QuantMultiheadAttention)
        return isinstance(m, leaf) or super().is_leaf_module(m, qualified_name)


def pack_model(model: nn.Module) -> torch.fx.GraphModule:
    """A converted model as a traced module of packed layers, BatchNorms folded where exact.

    Raises:
        ValueError: a model with no quantized layers, a layer-granularity or activation-only
            layer, or a forward torch.fx cannot trace."""
    import copy
    layers = list(quant_layers(model, include_8bit=True))
    if not layers:
        raise ValueError("the model has no quantized layers: call dambq.convert first")
    model = copy.deepcopy(model).cpu().eval()
    for name, layer in quant_layers(model, include_8bit=True):
        packed = PackedLayer.from_layer(layer)
        if name == "":
            model = packed
            break
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, packed)
    try:
        graph = _Tracer().trace(model)
    except Exception as error:
        raise ValueError(f"torch.fx cannot trace this model's forward ({type(error).__name__}: {error}); "
                         "the packed format stores the traced graph") from error
    gm = torch.fx.GraphModule(model, graph, class_name="PackedModel")
    _fold_batchnorms(gm)
    _functional(gm)
    return _flat(gm)


def _functional(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(gm.get_submodule(node.target)) not in FUNCTIONAL:
            continue
        call = FUNCTIONAL[type(gm.get_submodule(node.target))](gm.get_submodule(node.target))
        if call is None:
            node.replace_all_uses_with(node.args[0])
        else:
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(call[0], node.args, {**node.kwargs, **call[1]})
            node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _flat(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The same graph with every module at the top level (no container modules to store)."""
    modules = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            flat = node.target.replace(".", "_")
            modules[flat] = gm.get_submodule(node.target)
            node.target = flat
        elif node.op == "get_attr":
            raise ValueError(f"the traced graph reads the attribute {node.target!r} directly; not supported "
                             "by the packed format")
    return torch.fx.GraphModule(modules, gm.graph, class_name="PackedModel")


class HalfBatchNorm(nn.Module):
    """A BatchNorm that could not be folded, stored as one fp16 scale and shift per channel
    (evaluation only: y = x * scale + shift, computed in fp32)."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("scale", scale.half())
        self.register_buffer("shift", shift.half())

    def __reduce__(self):
        return HalfBatchNorm, (self.scale, self.shift)

    def forward(self, x: Tensor) -> Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x.float() * self.scale.float().view(shape) + self.shift.float().view(shape)).to(x.dtype)


def _fold_batchnorms(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        bn, source = gm.get_submodule(node.target), node.args[0]
        if not bn.track_running_stats:
            continue  # it normalises with the batch's own statistics even in evaluation
        layer = gm.get_submodule(source.target) if isinstance(source, torch.fx.Node) and source.op == "call_module" \
            else None
        if (isinstance(layer, PackedLayer) and layer.kind == "conv" and len(source.users) == 1
                and bn.num_features == layer.weight_shape[0]):
            layer.fold_batchnorm(bn)
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
            continue
        scale = (bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)) / (bn.running_var + bn.eps).sqrt()
        shift = (bn.bias.detach() if bn.affine else torch.zeros_like(scale)) - bn.running_mean * scale
        gm.add_submodule(node.target, HalfBatchNorm(scale, shift))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def packed_sizes(module: nn.Module, file_bytes: int | None = None) -> dict[str, int]:
    """Bytes per part of a packed model: sign planes, scales (clips, entries, bits, code-book
    coefficients, activation ranges), biases, 8-bit layers, BatchNorm left unfolded, other
    tensors, and (given the file size) the rest: the graph and the container."""
    sizes = dict.fromkeys(("weights (sign planes)", "scales and code-book", "biases", "8-bit layers",
                           "BatchNorm (unfolded)", "other tensors"), 0)
    for name, m in module.named_modules():
        tensors = list(m.named_buffers(recurse=False)) + list(m.named_parameters(recurse=False))
        for key, t in tensors:
            n = t.numel() * t.element_size()
            if isinstance(m, PackedLayer) and hasattr(m, "int8") and key != "bias":
                sizes["8-bit layers"] += n
            elif isinstance(m, PackedLayer) and key == "planes":
                sizes["weights (sign planes)"] += n
            elif isinstance(m, PackedLayer) and key == "bias":
                sizes["biases"] += n
            elif isinstance(m, (PackedLayer, PackedAct)):
                sizes["scales and code-book"] += n
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, HalfBatchNorm)):
                sizes["BatchNorm (unfolded)"] += n
            else:
                sizes["other tensors"] += n
    if file_bytes is not None:
        sizes["graph and container"] = file_bytes - sum(sizes.values())
        sizes["file"] = file_bytes
    return sizes


def save_packed(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Write a converted model as one self-contained packed file (see the module doc).

    Args:
        model: a model from `dambq.convert` (trained or not), channel granularity.
        path: the file to write (written whole, then renamed into place).

    Returns:
        `packed_sizes` of what was written, "file" included.

    Raises:
        ValueError: what `pack_model` cannot pack.
    """
    gm = pack_model(model)
    payload = io.BytesIO()
    torch.save(gm, payload)
    payload = zlib.compress(payload.getvalue(), 9)  # the planes are dense bits; the container is not
    header = json.dumps({"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                         "bytes": len(payload)}).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:  # one header line, then the compressed torch.save of the module
        f.write(MAGIC + header + b"\n" + payload)
    os.replace(tmp, path)
    return packed_sizes(gm, path.stat().st_size)


def load_packed(path: str | Path) -> nn.Module:
    """The runnable module of a file from `save_packed` (evaluation mode); needs only torch and dambq.

    Raises:
        FileNotFoundError: no such file.
        PackedFormatError: not a packed dambq model, another format version, or damaged
            (its checksum does not match).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no packed model at {path}")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise PackedFormatError(f"{path} is not a packed dambq model (see dambq.save_packed)")
    line, _, payload = raw[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError as error:
        raise PackedFormatError(f"{path} is damaged: its header is unreadable ({error})") from error
    if header.get("format") != FORMAT:
        raise PackedFormatError(f"{path} is not a packed dambq model (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise PackedFormatError(f"{path} is packed format version {header.get('version')}; this dambq reads "
                                f"version {VERSION}: pack the model again with this version")
    if len(payload) != header.get("bytes") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise PackedFormatError(f"{path} is damaged: its contents do not match its checksum (truncated or altered)")
    return torch.load(io.BytesIO(zlib.decompress(payload)), map_location="cpu", weights_only=False).eval()


def forward_ms(module: nn.Module, x: Tensor, repeats: int = 5) -> float:
    """Median milliseconds of `module(x)` without gradients, after one warm-up call: the
    speed comparisons of benchmarks/export_sizes.py and notebook 04 (ratios within one run)."""
    import statistics
    import time
    with torch.no_grad():
        module(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)
