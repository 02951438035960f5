"""Quantization-error analysis of weight quantizers, on trained weights or laws.

Every method quantizes the same weight groups (one per output channel) with 2^b
levels and is scored by MSE / mean(w^2) over all weights:

- ``lookup``   : DMBQ, each group's code picked by its shape statistic (the paper)
- ``laplace``  : DMBQ with V2's fixed Laplace table
- ``uniform``  : 2^b uniform levels, MSE-optimal clip looked up per shape
- ``pooled``   : the best multi-bit binary code for all groups pooled (each group
                 scaled to mean|w| = 1), fitted once: the best a single code can do
- ``per_group``: a multi-bit binary code fitted to every group by alternating
                 least squares (LQ-Nets / ALQ style, redone at every training step)
- ``lloyd_max``: unconstrained 2^b levels (k-means) for the pooled groups: the
                 bound for any one code scaled per group
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import torch
from torch import Tensor, nn

from .codebook import search_multibit
from .quantizers import DMBQWeight

METHODS = ("lookup", "laplace", "uniform", "pooled", "per_group", "lloyd_max")


def conv_weight_groups(model: nn.Module, skip_first_last: bool = True) -> list[Tensor]:
    """Per-layer [G, n] weight matrices (one row per output channel) of a model's convs
    and linears, without the first and last layer (kept at 8 bits by the method)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if skip_first_last:
        layers = layers[1:-1]
    return [m.weight.detach().float().reshape(m.weight.shape[0], -1).cpu() for m in layers]


def sample_groups(law: str, groups: int = 64, size: int = 576, seed: int = 0) -> list[Tensor]:
    """Weight groups drawn from a named law ("laplace" or "gaussian"), one layer."""
    g = torch.Generator().manual_seed(seed)
    if law == "gaussian":
        w = torch.randn(groups, size, generator=g)
    elif law == "laplace":
        u = torch.rand(groups, size, generator=g) - 0.5
        w = -torch.sign(u) * torch.log1p(-2 * u.abs())
    else:
        raise ValueError(f"unknown law {law!r}; use 'laplace' or 'gaussian'")
    return [w * 0.05]


def _normalized(layers: list[Tensor]) -> np.ndarray:
    """All groups pooled, each scaled to mean|w| = 1."""
    return torch.cat([(w / w.abs().mean(1, keepdim=True)).flatten() for w in layers]).double().numpy()


def quantize_dmbq(w: Tensor, bits: int, codebook: str) -> Tensor:
    """DMBQ of every row of w at steady state (the EMAs equal the current statistics)."""
    quantizer = DMBQWeight(w, w.shape[0], bits, codebook).eval()
    with torch.no_grad():
        return quantizer(w)


def _apply_code(w: Tensor, levels_unit: np.ndarray) -> Tensor:
    """Quantize each row with `levels_unit * mean|row|` (sorted unit levels)."""
    scale = w.abs().mean(1, keepdim=True)
    levels = torch.as_tensor(levels_unit, dtype=w.dtype)
    index = torch.searchsorted((levels[1:] + levels[:-1]) / 2, (w / scale).contiguous())
    return levels[index] * scale


def per_group_multibit(w: Tensor, bits: int, init_coefs: np.ndarray | None = None,
                       iters: int = 20) -> Tensor:
    """Alternating least squares per row, batched over rows (ALQ/LQ-Nets style).

    Started from `init_coefs` (absolute coefficients for mean|w| = 1, e.g. the
    pooled best code) scaled per row; each iteration can only lower the error."""
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)), dtype=w.dtype)  # [L, b]
    if init_coefs is None:
        base = 2.0 ** -torch.arange(bits, dtype=w.dtype)
        init_coefs = (base / base.sum() * (1.0 + bits)).numpy()
    alpha = w.abs().mean(1, keepdim=True) * torch.as_tensor(np.asarray(init_coefs), dtype=w.dtype)
    for _ in range(iters):
        levels, order = torch.sort(alpha @ signs.T, dim=1)                     # [G, L]
        index = torch.searchsorted(((levels[:, 1:] + levels[:, :-1]) / 2).contiguous(), w.contiguous())
        planes = signs[torch.gather(order, 1, index)]                           # [G, n, b]
        # ridge relative to the row length, in float64: a row whose sign planes coincide
        # (few distinct values) makes the plain Gram matrix singular
        gram = (planes.transpose(1, 2) @ planes).double() + 1e-6 * w.shape[1] * torch.eye(bits, dtype=torch.float64)
        rhs = (planes.transpose(1, 2) @ w.unsqueeze(2)).double()
        alpha = torch.linalg.solve(gram, rhs).squeeze(2).abs().to(w.dtype)
    levels, _ = torch.sort(alpha @ signs.T, dim=1)
    index = torch.searchsorted(((levels[:, 1:] + levels[:, :-1]) / 2).contiguous(), w.contiguous())
    return torch.gather(levels, 1, index)


def lloyd_max(x: np.ndarray, bits: int, iters: int = 200) -> np.ndarray:
    """Unconstrained 2^b-level quantizer of samples x (1-D k-means from quantiles)."""
    levels = np.quantile(x, (np.arange(2 ** bits) + 0.5) / 2 ** bits)
    for _ in range(iters):
        index = np.searchsorted((levels[1:] + levels[:-1]) / 2, x)
        sums = np.bincount(index, weights=x, minlength=levels.size)
        counts = np.bincount(index, minlength=levels.size)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
        if np.allclose(new, levels, rtol=0, atol=1e-10):
            break
        levels = np.sort(new)
    return levels


def _quantize(method: str, w: Tensor, bits: int, codes: dict[str, np.ndarray], pooled_coefs: np.ndarray) -> Tensor:
    """One method applied to the rows of w (see the module docstring)."""
    if method in ("lookup", "laplace", "uniform"):
        return quantize_dmbq(w, bits, method)
    if method == "per_group":
        return per_group_multibit(w.double(), bits, pooled_coefs).float()
    return _apply_code(w.double(), codes[method]).float()


def error_table(layers: list[Tensor], bits_range=(1, 2, 3, 4),
                methods=METHODS) -> dict[str, dict[int, float]]:
    """MSE / mean(w^2) for each method and bit-width over all groups of `layers`."""
    pooled = _normalized(layers)
    energy = sum(float((w ** 2).sum()) for w in layers)
    table: dict[str, dict[int, float]] = {m: {} for m in methods}
    for bits in bits_range:
        codes = {}
        a, k, _ = search_multibit(pooled, bits)
        codes["pooled"] = np.sort(np.array([sum(s) for s in itertools.product(*[(-c, c) for c in a * k])]))
        if "lloyd_max" in methods:
            codes["lloyd_max"] = lloyd_max(pooled, bits)
        for method in methods:
            sse = sum(float(((w - _quantize(method, w, bits, codes, a * k)) ** 2).sum()) for w in layers)
            table[method][bits] = sse / energy
    return table


def time_per_step(layers: list[Tensor], bits: int = 4, repeats: int = 5) -> dict[str, float]:
    """Seconds to quantize all layers once: lookup DMBQ vs per-group fitting
    (20 ALS iterations, what a per-iteration MBN method pays every step)."""
    quantizers = [DMBQWeight(w, w.shape[0], bits, "lookup").train() for w in layers]
    timings = {}
    for name, fn in {"lookup": lambda: [q(w) for q, w in zip(quantizers, layers)],
                     "per_group": lambda: [per_group_multibit(w, bits) for w in layers]}.items():
        fn()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings[name] = (time.perf_counter() - started) / repeats
    return timings


def format_table(tables: dict[str, dict[str, dict[int, float]]], bits_range=(1, 2, 3, 4)) -> str:
    """Markdown: one block of rows per data source, one column per bit-width."""
    lines = ["| data | method | " + " | ".join(f"b={b}" for b in bits_range) + " |",
             "|---|---|" + "---|" * len(bits_range)]
    for source, table in tables.items():
        for method, row in table.items():
            lines.append(f"| {source} | {method} | " + " | ".join(f"{row[b]:.4f}" for b in bits_range) + " |")
    return "\n".join(lines)
