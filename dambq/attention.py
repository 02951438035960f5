"""nn.MultiheadAttention with quantized input and output projections.

nn.MultiheadAttention keeps its input projection as a bare parameter (`in_proj_weight`)
and its output projection as a Linear subclass, so a layer-by-layer conversion would leave
it float while the bit averages claimed otherwise (a third of ViT-B/16's weights). Here
both projections become `QuantLinear`s, allocated like any other layer, and the attention
itself is computed from their outputs with `F.scaled_dot_product_attention`; the module
keeps nn.MultiheadAttention's call signature and (output, weights) return.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import QUANT_LAYERS, QuantLinear


def unsupported_reason(mha: nn.MultiheadAttention) -> str | None:
    """Why `mha` cannot be converted (None: it can). Such a module stays float, named by
    `dambq.convert`'s warning and its conversion report."""
    if not mha._qkv_same_embed_dim:
        return "kdim/vdim differ from embed_dim (separate q/k/v projections)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported"
    return None


class QuantMultiheadAttention(nn.Module):
    """Multi-head attention whose q/k/v projection (`in_proj`) and output projection
    (`out_proj`) are quantized Linear layers.

    Args:
        embed_dim, num_heads, dropout, bias, batch_first: as nn.MultiheadAttention.
        **quant_args: passed to both `QuantLinear`s (weight_bits, act_bits, act_signed, ...).

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> q = QuantMultiheadAttention.from_float(mha, weight_bits=4, act_bits=8, act_signed=True)
        >>> x = torch.randn(3, 5, 8)
        >>> q(x, x, x, need_weights=False)[0].shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, device=None, dtype=None, **quant_args):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.batch_first, self.head_dim = batch_first, embed_dim // num_heads
        self.in_proj = QuantLinear(embed_dim, 3 * embed_dim, bias, device=device, dtype=dtype, **quant_args)
        self.out_proj = QuantLinear(embed_dim, embed_dim, bias, device=device, dtype=dtype, **quant_args)

    # nn.TransformerEncoderLayer's fused evaluation path reads these before it uses the module;
    # in_proj_bias None sends it down the ordinary path, which calls this forward
    _qkv_same_embed_dim = True
    in_proj_bias = None

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, **quant_args) -> "QuantMultiheadAttention":
        """A quantized copy of `mha`, weights and biases included.

        Raises:
            ValueError: for the configurations `unsupported_reason` names."""
        reason = unsupported_reason(mha)
        if reason:
            raise ValueError(f"cannot quantize this nn.MultiheadAttention: {reason}")
        w = mha.in_proj_weight
        layer = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.batch_first,
                    device=w.device, dtype=w.dtype, **quant_args)
        with torch.no_grad():
            layer.in_proj.weight.copy_(w)
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                layer.in_proj.bias.copy_(mha.in_proj_bias)
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        for proj in (layer.in_proj, layer.out_proj):
            proj.weight_quant.reset_statistics(proj.weight)
        return layer

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if query is key and key is value:  # self-attention: one product, one input quantization
            return self.in_proj(query).chunk(3, dim=-1)
        # packed (dambq.export): only its whole forward exists, so each input is projected three
        # times and one third kept (3x the cross-attention projection work, evaluation only)
        if not hasattr(self.in_proj, "quantized_weight"):
            return tuple(self.in_proj(t).chunk(3, dim=-1)[i] for i, t in enumerate((query, key, value)))
        w, b = self.in_proj.quantized_weight(), self.in_proj.bias
        ws, bs = w.chunk(3), (b.chunk(3) if b is not None else (None,) * 3)
        return tuple(F.linear(self.in_proj.act_quant(t), wi, bi) for t, wi, bi in zip((query, key, value), ws, bs))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:  # (L, B, E) -> (B, L, E), keeping `is` for self-attention
            same = query is key and key is value
            query = query.transpose(0, 1)
            key, value = (query, query) if same else (key.transpose(0, 1), value.transpose(0, 1))
        batch, length, _ = query.shape
        q, k, v = (t.reshape(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in self._project(query, key, value))
        mask = _additive_mask(attn_mask, key_padding_mask, batch, self.num_heads, length, k.shape[2], q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if is_causal and mask is None:
                mask = _additive_mask(torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).triu(1),
                                      None, batch, self.num_heads, length, k.shape[2], q.dtype)
            weights = torch.softmax(scores + mask if mask is not None else scores, dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if unbatched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _additive_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, heads: int,
                   length: int, source: int, dtype: torch.dtype) -> Tensor | None:
    """nn.MultiheadAttention's two masks (bool: True = not attended; or additive floats) as one
    additive float mask of shape [batch, heads, length, source]."""
    def additive(m: Tensor) -> Tensor:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
    mask = None
    if attn_mask is not None:
        m = additive(attn_mask)
        mask = m.reshape(batch, heads, length, source) if m.dim() == 3 else m.expand(batch, heads, length, source)
    if key_padding_mask is not None:
        m = additive(key_padding_mask).reshape(batch, 1, 1, source)
        mask = m if mask is None else mask + m
    return mask


QUANT_LAYERS[nn.MultiheadAttention] = QuantMultiheadAttention
