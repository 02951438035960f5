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
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from .codebook import search_multibit, shape_statistic, snap, snap_index, unit_weights
from .convert import paper_8bit_layers
from .quantizers import DMBQWeight

METHODS = ("lookup", "laplace", "uniform", "pooled", "per_group", "lloyd_max")


def layer_weights(model: nn.Module, skip_8bit: bool = True) -> dict[str, Tensor]:
    """{layer name: [G, n] weights, one row per output channel} of a float model's convs and
    linears, without the layers the paper keeps at 8 bits (`dambq.convert.paper_8bit_layers`)."""
    skip = paper_8bit_layers(model) if skip_8bit else set()
    return {n: m.weight.detach().float().reshape(m.weight.shape[0], -1).cpu() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip}


def conv_weight_groups(model: nn.Module, skip_first_last: bool = True) -> list[Tensor]:
    """`layer_weights` as a list."""
    return list(layer_weights(model, skip_first_last).values())


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


def quantize_dmbq(w: Tensor, bits: int, codebook: str) -> Tensor:
    """DMBQ of every row of w at steady state (the EMAs equal the current statistics)."""
    quantizer = DMBQWeight(w, w.shape[0], bits, codebook).eval()
    with torch.no_grad():
        return quantizer(w)


def _apply_code(w: Tensor, levels_unit: np.ndarray) -> Tensor:
    """Quantize each row with `levels_unit * mean|row|` (sorted unit levels)."""
    scale = w.abs().mean(1, keepdim=True)
    return snap(w / scale, torch.as_tensor(levels_unit, dtype=w.dtype)) * scale


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
        planes = signs[torch.gather(order, 1, snap_index(w, levels))]                           # [G, n, b]
        # ridge relative to the row length, in float64: a row whose sign planes coincide
        # (few distinct values) makes the plain Gram matrix singular
        gram = (planes.transpose(1, 2) @ planes).double() + 1e-6 * w.shape[1] * torch.eye(bits, dtype=torch.float64)
        rhs = (planes.transpose(1, 2) @ w.unsqueeze(2)).double()
        alpha = torch.linalg.solve(gram, rhs).squeeze(2).abs().to(w.dtype)
    return snap(w, torch.sort(alpha @ signs.T, dim=1)[0])


def lloyd_max(x: np.ndarray, bits: int, iters: int = 200) -> np.ndarray:
    """Unconstrained 2^b-level quantizer of samples x (1-D k-means from quantiles)."""
    levels = np.quantile(x, (np.arange(2 ** bits) + 0.5) / 2 ** bits)
    for _ in range(iters):
        index = snap_index(x, levels)
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
    pooled = unit_weights(layers)
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


# ------------------------------------------------------------------ which law fits the weights

LAW_LABELS = {"laplace": "Laplace", "gaussian": "Gaussian", "gennorm": "gen. Gaussian"}


def as_numpy(x: Any) -> np.ndarray:
    """A flat float64 numpy copy of a tensor or array."""
    if isinstance(x, Tensor):
        return x.detach().double().cpu().flatten().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def subsample(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if x.size <= n:
        return x
    return np.random.default_rng(seed).choice(x, n, replace=False)


def fit_laws(x: Any, max_samples: int = 5000) -> dict[str, Any]:
    """Maximum-likelihood Laplace, Gaussian and generalized-Gaussian fits (frozen scipy laws)."""
    xs = subsample(as_numpy(x), max_samples)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # the optimiser probes extreme shapes
        beta, loc, scale = stats.gennorm.fit(xs)
    return {"laplace": stats.laplace(*stats.laplace.fit(xs)),
            "gaussian": stats.norm(*stats.norm.fit(xs)),
            "gennorm": stats.gennorm(beta, loc, scale)}


def law_fit_table(layers: Mapping[str, Any], max_samples: int = 5000) -> pd.DataFrame:
    """Per layer: size, excess kurtosis, shape statistic, fitted beta and NLL per law (which law fits)."""
    rows = []
    for name, w in layers.items():
        x = as_numpy(w)
        fits = fit_laws(x, max_samples)
        xs = subsample(x, max_samples, seed=1)
        with np.errstate(over="ignore"):
            nll = {law: -float(np.mean(dist.logpdf(xs))) for law, dist in fits.items()}
        rows.append({"layer": name, "weights": x.size, "excess_kurtosis": float(stats.kurtosis(x)),
                     "shape_stat": float(shape_statistic(x)[1]),
                     "gennorm_beta": float(fits["gennorm"].args[0]),
                     **{f"nll_{law}": v for law, v in nll.items()},
                     "best_law": LAW_LABELS[min(nll, key=nll.get)]})
    return pd.DataFrame(rows).set_index("layer")
