"""Multi-bit binary code-books and their offline, distribution-aware search.

A b-bit multi-bit binary code represents a weight as ``c * sum_i a_i s_i`` with
``s_i in {-1, +1}`` and ``sum_i a_i = 1``: its 2^b levels lie in [-1, 1] in units of
the clip ``c = k_b * mean|w|``. Everything in this module is in those units.

DMBQ's point is that the best (a, k) depend on the *shape* of the weight
distribution. We search them offline for a family of shapes (generalized Gaussian
of shape beta; beta = 1 is Laplace, beta = 2 Gaussian) and, at training time, let
each weight group pick its entry from a cheap statistic, mean|w| / rms(w), which is
monotone in beta. The search is alternating least squares (assign every sample to
its nearest level, then refit the coefficients by least squares), run from several
starts, on quantile points of the distribution, so its result is deterministic.

Code-books are registered by name in ``CODEBOOKS``:

- ``lookup``  : the paper's distribution-aware table, one entry per beta on a grid.
- ``laplace`` : the V2 table (one entry, tuned for a Laplace prior).
- ``v1``      : the original code's cruder constant table (one entry).
- ``uniform`` : power-of-two coefficients (uniform mid-rise levels, the baseline),
  with the MSE-optimal clip looked up per beta.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, special, stats

MAX_BITS = 4
MAX_LEVELS = 2 ** MAX_BITS

# The V2 table (spec section 1): coefficients a_1..a_b and clip factor k_b.
V2_LAPLACE_TABLE: dict[int, tuple[tuple[float, ...], float]] = {
    0: ((), 0.5),
    1: ((1.0,), 0.98),
    2: ((0.6123, 0.3877), 2.6),
    3: ((0.4557, 0.3436, 0.2007), 4.16),
    4: ((0.3317, 0.2858, 0.2346, 0.1479), 5.66),
}

# The original code's (V1) cruder table (spec section 1), the fourth code-book ("v1").
V1_TABLE: dict[int, tuple[tuple[float, ...], float]] = {
    0: ((), 0.5),
    1: ((1.0,), 0.98),
    2: ((0.65, 0.35), 2.43),
    3: ((7 / 15, 1 / 3, 1 / 5), 4.36),
    4: ((0.32, 0.28, 0.24, 0.16), 5.52),
}
FIXED_TABLES = {"laplace": V2_LAPLACE_TABLE, "v1": V1_TABLE}  # one entry each, whatever the shape

# Shapes of the lookup family: log-spaced from heavy-tailed to near-uniform, with
# Laplace (1.0) and Gaussian (2.0) exactly on the grid.
BETA_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.65,
                                1.8, 2.0, 2.25, 2.5, 3.0, 4.0)


def levels_from_coefs(coefs: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """All 2^b levels sum_i(+-a_i), sorted; b = 0 gives the single level 0.

    Why: the levels, not the coefficients, are what the forward pass snaps to, and
    building them from the coefficients is what keeps a code multi-bit binary."""
    coefs = np.asarray(coefs, dtype=np.float64)
    if coefs.size == 0:
        return np.zeros(1)
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=coefs.size)))
    return np.sort(signs @ coefs)


def shape_stat_of_beta(beta: float | np.ndarray) -> np.ndarray:
    """mean|x| / rms(x) of a generalized Gaussian of shape beta.

    Why: it is scale free, cheap to compute per weight group, and strictly
    increasing in beta (Laplace 0.707, Gaussian 0.798, uniform 0.866), so a group's
    sample value picks its table entry with one bucketize."""
    beta = np.asarray(beta, dtype=np.float64)
    return np.exp(special.gammaln(2 / beta) - 0.5 * (special.gammaln(1 / beta) + special.gammaln(3 / beta)))


def gennorm_quantile_points(beta: float, n: int = 40_000) -> np.ndarray:
    """n equal-probability points of a generalized Gaussian, scaled to mean|x| = 1.

    Why: quantile points make the expected error of a quantizer a deterministic
    average (no sampling noise), tails included, so the search is reproducible."""
    p = (np.arange(n) + 0.5) / n
    x = stats.gennorm.ppf(p, beta)
    return x / np.abs(x).mean()


def snap_index(x, levels):
    """Index of the nearest level for every value of `x` (a tie goes to the lower level).

    The one home of nearest-level snapping: quantizers, analysis and plots all call it.
    `levels` are sorted: [L], shared by every value, or [G, L], one row of levels per row of
    `x` [G, n] (torch). Works on numpy arrays and torch tensors alike.

    Example:
        >>> snap_index(np.array([-0.9, 0.1, 0.5, 0.6]), np.array([-1.0, 0.0, 1.0])).tolist()
        [0, 1, 1, 2]
    """
    thresholds = (levels[..., 1:] + levels[..., :-1]) / 2
    if isinstance(x, np.ndarray):
        return np.searchsorted(thresholds, x)
    return torch.searchsorted(thresholds.contiguous(), x.contiguous())


def snap(x, levels):
    """The nearest level for every value of `x` (see `snap_index`).

    Example:
        >>> snap(torch.tensor([[0.4, 0.8], [0.4, 0.8]]), torch.tensor([[0.0, 1.0], [0.0, 0.5]])).tolist()
        [[0.0, 1.0], [0.5, 0.5]]
    """
    index = snap_index(x, levels)
    if isinstance(x, np.ndarray) or levels.dim() == 1:
        return levels[index]
    return torch.gather(levels, 1, index)


def quantize_to_levels(x: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest level of every sample: (index, value). Levels must be sorted."""
    index = snap_index(x, levels)
    return index, levels[index]


def shape_statistic(w):
    """(mean|w|, mean|w| / rms(w)) of every row of `w` [G, n] (torch or numpy).

    The one home of DMBQ's shape statistic: it is monotone in the generalized-Gaussian
    shape beta (`shape_stat_of_beta`), so it picks each group's code-book entry.

    Example:
        >>> shape_statistic(np.array([[1.0, -1.0, 1.0, -1.0]]))[1].tolist()   # two-valued: the maximum, 1
        [1.0]
    """
    if isinstance(w, np.ndarray):
        mean_abs = np.abs(w).mean(-1)
        return mean_abs, mean_abs / np.maximum(np.sqrt((w ** 2).mean(-1)), 1e-12)
    mean_abs = w.abs().mean(-1)
    return mean_abs, mean_abs / w.pow(2).mean(-1).sqrt().clamp_min(1e-12)


def unit_weights(groups) -> np.ndarray:
    """Every group (row) scaled to mean|w| = 1 and pooled: the units DMBQ's code-books live in.

    `groups`: tensors [G, n] (a list, or a mapping of layer name to tensor)."""
    groups = groups.values() if hasattr(groups, "values") else groups
    return torch.cat([(w / w.abs().mean(1, keepdim=True).clamp_min(1e-12)).flatten()
                      for w in groups]).double().numpy()


def fit_multibit(x: np.ndarray, bits: int, init: np.ndarray | None = None,
                 iters: int = 300, tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """Best b-bit multi-bit binary quantizer of samples x by alternating least squares.

    Returns the absolute coefficients alpha (level set = sums of +-alpha_i, so the
    clip is sum(alpha)) and the mean squared error. Why alternating least squares:
    with the bit-planes s fixed, the coefficients are a b x b least-squares solve;
    with the coefficients fixed, the nearest level gives the best bit-planes, so the
    error never increases."""
    if bits == 0:
        return np.zeros(0), float(np.mean(x ** 2))
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=bits)))  # [2^b, b]
    alpha = np.asarray(init, dtype=np.float64) if init is not None else \
        np.abs(x).mean() * _power_of_two_coefs(bits) * bits
    previous = math.inf
    for _ in range(iters):
        level_values = signs @ alpha
        order = np.argsort(level_values)
        index, q = quantize_to_levels(x, level_values[order])
        mse = float(np.mean((x - q) ** 2))
        if previous - mse < tol * previous:
            break
        previous = mse
        planes = signs[order][index]  # bit-planes of every sample [n, b]
        alpha, *_ = np.linalg.lstsq(planes, x, rcond=None)
        alpha = np.sort(np.abs(alpha))[::-1]
    return alpha, mse


def _starts(bits: int) -> list[np.ndarray]:
    """Several starting coefficient sets (V2's table, powers of two, flatter ones)."""
    coefs, k = V2_LAPLACE_TABLE[bits]
    starts = [np.array(coefs) * k]
    for ratio in (0.5, 0.65, 0.8):
        a = ratio ** np.arange(bits)
        for clip in (0.7, 1.0, 1.3):  # relative to V2's clip for this bit-width
            starts.append(a / a.sum() * clip * k)
    return starts


def search_multibit(x: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    """The best multi-bit binary code for samples x (scaled to mean|x| = 1).

    Returns (a, k, mse): coefficients a summing to 1, clip factor k = c / mean|x|,
    and the mean squared error. Best of several starts, since the alternating
    search finds a local optimum."""
    if bits == 0:
        return np.zeros(0), V2_LAPLACE_TABLE[0][1], float(np.mean(x ** 2))
    best = None
    for start in _starts(bits):
        alpha, mse = fit_multibit(x, bits, init=start)
        if best is None or mse < best[1]:
            best = (alpha, mse)
    alpha, mse = best
    k = float(alpha.sum())
    return alpha / k, k, mse


def best_uniform_clip(x: np.ndarray, bits: int) -> tuple[float, float]:
    """MSE-optimal clip factor k for 2^b uniform mid-rise levels on samples x.

    Why mid-rise (no zero level): it is the multi-bit binary code with
    power-of-two coefficients, so the uniform baseline shares every other part of
    the DMBQ machinery and differs only in its levels."""
    if bits == 0:
        return V2_LAPLACE_TABLE[0][1], float(np.mean(x ** 2))
    unit = levels_from_coefs(_power_of_two_coefs(bits))
    result = optimize.minimize_scalar(
        lambda k: np.mean((x - quantize_to_levels(x, unit * k)[1]) ** 2),
        bounds=(0.5, 8.0), method="bounded", options={"xatol": 1e-4})
    return float(result.x), float(result.fun)


def _power_of_two_coefs(bits: int) -> np.ndarray:
    a = 2.0 ** -np.arange(bits)
    return a / a.sum()


@dataclass(frozen=True)
class Codebook:
    """A table of multi-bit binary codes indexed by (bits, shape entry).

    levels: [MAX_BITS+1, n_shapes, MAX_LEVELS] sorted levels in [-1, 1], padded by
    repeating the top level; clip_factor: [MAX_BITS+1, n_shapes] (k_b);
    coefs: [MAX_BITS+1, n_shapes, MAX_BITS] (a_i, zero padded); shape_edges:
    [n_shapes-1] boundaries on mean|w|/rms(w) between neighbouring entries."""

    name: str
    betas: tuple[float, ...]
    coefs: torch.Tensor
    clip_factor: torch.Tensor
    levels: torch.Tensor
    shape_edges: torch.Tensor

    def entry(self, beta: float) -> int:
        """Index of the table entry nearest to shape beta (in the statistic)."""
        stat = float(shape_stat_of_beta(beta))
        return int(torch.bucketize(torch.tensor(stat, dtype=torch.float64), self.shape_edges))

    def pick(self, shape_stat: torch.Tensor) -> torch.Tensor:
        """Table entry of every group from its mean|w|/rms(w) statistic."""
        edges = self.shape_edges.to(device=shape_stat.device, dtype=shape_stat.dtype)
        return torch.bucketize(shape_stat, edges)


def _make_codebook(name: str, betas: tuple[float, ...], table: dict) -> Codebook:
    """Pack per-(bits, shape) coefficients and clips into padded tensors."""
    n = len(betas)
    coefs = torch.zeros(MAX_BITS + 1, n, MAX_BITS, dtype=torch.float64)
    clip = torch.zeros(MAX_BITS + 1, n, dtype=torch.float64)
    levels = torch.zeros(MAX_BITS + 1, n, MAX_LEVELS, dtype=torch.float64)
    for (bits, j), (a, k) in table.items():
        a = np.asarray(a, dtype=np.float64)
        coefs[bits, j, :bits] = torch.from_numpy(a)
        clip[bits, j] = k
        lv = levels_from_coefs(a)
        padded = np.concatenate([lv, np.full(MAX_LEVELS - lv.size, lv[-1])])
        levels[bits, j] = torch.from_numpy(padded)
    stat = shape_stat_of_beta(np.array(betas))
    edges = torch.from_numpy((stat[1:] + stat[:-1]) / 2) if n > 1 else torch.zeros(0, dtype=torch.float64)
    return Codebook(name, tuple(betas), coefs.float(), clip.float(), levels.float(), edges.float())


TABLE_FILE = Path(__file__).with_name("codebook_tables.json")


def search_table(name: str, betas: tuple[float, ...] = BETA_GRID) -> dict[str, list]:
    """Run the offline search for a searched code-book: {beta: [[a..., k] per bits]}.

    Why a separate step: it takes about half a minute, so its result is written to
    ``codebook_tables.json`` by ``python -m dambq.codebook`` and a test checks that
    a fresh search still reproduces the shipped entries."""
    table = {}
    for beta in betas:
        x = gennorm_quantile_points(beta)
        rows = [[*V2_LAPLACE_TABLE[0][0], V2_LAPLACE_TABLE[0][1]]]
        for bits in range(1, MAX_BITS + 1):
            if name == "lookup":
                a, k, _ = search_multibit(x, bits)
            elif name == "uniform":
                a = _power_of_two_coefs(bits)
                k, _ = best_uniform_clip(x, bits)
            else:
                raise ValueError(f"{name!r} is not a searched code-book")
            rows.append([*map(float, a), float(k)])
        table[repr(beta)] = rows
    return table


def _from_table(name: str, table: dict[str, list]) -> Codebook:
    betas = tuple(float(b) for b in table)
    entries = {}
    for j, rows in enumerate(table.values()):
        for bits, row in enumerate(rows):
            entries[(bits, j)] = (row[:-1], row[-1])
    return _make_codebook(name, betas, entries)


@cache
def build_codebook(name: str) -> Codebook:
    """The named code-book, cached for the process.

    ``laplace`` (V2) and ``v1`` (the original code) are constant tables; ``lookup`` and
    ``uniform`` come from the shipped search results (``codebook_tables.json``), searched
    afresh if absent."""
    if name in FIXED_TABLES:
        return _make_codebook(name, (1.0,), {(b, 0): FIXED_TABLES[name][b] for b in range(MAX_BITS + 1)})
    if name not in CODEBOOKS:
        raise ValueError(f"unknown codebook {name!r}; choose one of {list(CODEBOOKS)}")
    tables = json.loads(TABLE_FILE.read_text()) if TABLE_FILE.exists() else {}
    table = tables.get(name) or search_table(name)
    return _from_table(name, table)


CODEBOOKS = ("lookup", "laplace", "uniform", "v1")


if __name__ == "__main__":
    # Regenerate the shipped tables: python -m dambq.codebook
    tables = {name: search_table(name) for name in ("lookup", "uniform")}
    TABLE_FILE.write_text(json.dumps(tables, indent=1) + "\n")
    print(f"wrote {TABLE_FILE}")
