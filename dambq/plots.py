"""Figures of the workbook: plain functions that take data and return a matplotlib Figure.

    fig = plots.error_table_figure({"Laplace": table_a, "ResNet20": table_b})
    plots.save(fig, "01_error_table", figures_dir)          # figures/01_error_table.png

Every function draws under one style (seaborn whitegrid, the colour-blind
palette) and keys colours by meaning, so that a method, a law or a stage has the
same colour in every figure: the lookup code-book and the generalized-Gaussian
law (the family it is searched on) are blue, V2's Laplace table and the Laplace
law orange, the uniform code green, the Gaussian law purple, Lloyd-Max black.
Nothing here trains or changes a model; the few tables next to the figures
(`law_fit_table`, `error_table_frame`) only reshape data for display.

Why one module of ~700 lines: every figure follows one style, palette and save rule
(`STYLE`, `color`, `save`), and each function stands alone; the numbers they draw are
computed elsewhere (`dambq.analysis`, `dambq.lba`, `dambq.export`).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy import stats
from torch import Tensor, nn

from .analysis import LAW_LABELS, fit_laws, law_fit_table, layer_weights, lloyd_max  # noqa: F401 (plots.* names)
from .analysis import as_numpy as _numpy, subsample as _subsample
from .codebook import shape_stat_of_beta, shape_statistic, snap, unit_weights
from .quantizers import DMBQWeight

ArrayLike = Tensor | np.ndarray | Sequence[float]
Metrics = pd.DataFrame | str | Path | Sequence[Mapping[str, Any]]

_CB = sns.color_palette("colorblind")
STYLE: dict[str, Any] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "axes.prop_cycle": plt.cycler(color=_CB),
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "figure.titlesize": 12.5,
    "figure.titleweight": "bold",
    "legend.frameon": False,
    "savefig.bbox": "tight",
}

# One colour per meaning, shared by every figure.
COLORS: dict[str, Any] = {
    # code-books / error-table methods
    "lookup": _CB[0], "laplace": _CB[1], "uniform": _CB[2], "pooled": _CB[6], "per_group": _CB[5],
    "lloyd_max": "black",
    # laws
    "gennorm": _CB[0], "gaussian": _CB[4], "norm": _CB[4],
    # pipeline stages
    "float": _CB[7], "w4a4": _CB[0], "w4a4_uniform": _CB[2], "w4a4_laplace": _CB[1], "lba": _CB[3],
    "w2a2_fixed": _CB[9],
    # allocation signals (the frontier): "uniform" there is no allocation, so it takes w2a2_fixed's colour,
    # not the uniform code-book's, which random allocation used to share
    "alloc:lba": _CB[3], "alloc:fisher": _CB[1], "alloc:random": _CB[4], "alloc:uniform": _CB[9],
    # kinds
    "weight": _CB[0], "act": _CB[1],
}
LABELS: dict[str, str] = {
    "lookup": "DMBQ lookup (paper)", "laplace": "DMBQ Laplace table (V2)", "uniform": "uniform, MSE clip",
    "pooled": "best single multi-bit code", "per_group": "per-group ALS (LQ-Nets/ALQ)",
    "lloyd_max": "Lloyd-Max (bound)",
    "gennorm": "gen. Gaussian", "gaussian": "Gaussian", "norm": "Gaussian",
    "weight": "weights", "act": "activations",
}
PRUNED_COLOR = "#c0392b"
MISSING_COLOR = "#f0f0f0"


def color(key: str, index: int = 0) -> Any:
    """The colour of a method, law, stage or kind; the palette cycles for unknown keys."""
    return COLORS.get(key, _CB[index % len(_CB)])


def _styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw under STYLE without touching the caller's global rcParams."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Figure:
        with plt.rc_context(STYLE), np.errstate(over="ignore", under="ignore"):  # far tails of fitted laws
            return fn(*args, **kwargs)
    return wrapper


def _subplots(*args, **kwargs):
    """plt.subplots with constrained layout: titles, outside legends and colorbars never overlap."""
    return plt.subplots(*args, layout="constrained", **kwargs)


def save(fig: Figure, name: str, figures_dir: str | Path = "figures", dpi: int = 120) -> Path:
    """Write `fig` as <figures_dir>/<name>.png and return the path: one place decides format and size."""
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


# ----------------------------------------------------------------------------- data helpers

pooled_unit_weights = unit_weights  # the name notebooks use; the rule lives in dambq.codebook


def error_table_frame(tables: Mapping) -> pd.DataFrame:
    """analysis.error_table output (one table, or {source: table}) as a (source, method) x bits frame."""
    tables = _as_sources(tables)
    rows = {(source, method): {f"b={int(b)}": v for b, v in row.items()}
            for source, table in tables.items() for method, row in table.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.names = ["data", "method"]
    return frame


def _as_sources(tables: Mapping) -> dict[str, dict[str, dict[int, float]]]:
    """A single error table becomes {"": table}; bit keys become ints (JSON gives strings)."""
    first = next(iter(tables.values()))
    nested = isinstance(next(iter(first.values())), Mapping)
    tables = tables if nested else {"": tables}
    return {src: {m: {int(b): float(v) for b, v in row.items()} for m, row in t.items()}
            for src, t in tables.items()}


def _grid(n: int, ncols: int, width: float = 2.9, height: float = 2.3, **kwargs):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


# ----------------------------------------------------------------------------- distributions

def _hist_with_fits(ax, x: np.ndarray, bins: int, logy: bool, max_samples: int) -> None:
    fits = fit_laws(x, max_samples)
    beta = fits["gennorm"].args[0]
    ax.text(0.98, 0.95, f"β={beta:.2f}" if beta < 20 else "β>20 (flat)", transform=ax.transAxes, ha="right", va="top",
            fontsize=8, color=color("gennorm"))
    spread = np.quantile(np.abs(x - np.median(x)), 0.999) * 1.15 + 1e-12
    center = float(np.median(x))
    ax.hist(x, bins=np.linspace(center - spread, center + spread, bins), density=True,
            histtype="stepfilled", color="0.75", edgecolor="none", label="weights")
    grid = np.linspace(center - spread, center + spread, 400)
    for law in ("gennorm", "laplace", "gaussian"):  # the dashed Gaussian on top: it often overlaps the gen. one
        dist = fits[law]
        ax.plot(grid, dist.pdf(grid), color=color(law), lw=2.0 if law == "gennorm" else 1.4, label=LAW_LABELS[law],
                ls="--" if law == "gaussian" else "-")
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-3 * ax.get_ylim()[1]))
        ax.yaxis.set_minor_locator(plt.NullLocator())  # minor log ticks cost seconds on 18 panels
    ax.set_xlim(center - spread, center + spread)
    if not logy:
        ax.set_yticklabels([])
    ax.tick_params(labelsize=7.5)


@_styled
def histograms_with_fits(samples: Mapping[str, ArrayLike], bins: int = 70, ncols: int = 6,
                         logy: bool = False, max_samples: int = 5000, title: str | None = None) -> Figure:
    """One histogram per named sample with its Laplace/Gaussian/gen-Gaussian ML fits: which law the data follow."""
    fig, axes = _grid(len(samples), ncols)
    for ax, (name, w) in zip(axes, samples.items()):
        x = _numpy(w)
        _hist_with_fits(ax, x, bins, logy, max_samples)
        ax.set_title(f"{name}\nkurt {stats.kurtosis(x):+.2f}, n={x.size}", fontsize=8.5)
    handles, labels = axes[0].get_legend_handles_labels()
    labels = [label + (" (fitted β in each panel)" if label.startswith("gen.") else "") for label in labels]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    fig.suptitle(title or "Weight histograms with maximum-likelihood fits" + (" (log density)" if logy else ""))
    return fig


def weight_histograms_with_fits(model: nn.Module | Mapping[str, ArrayLike], max_layers: int | None = None,
                                bins: int = 70, ncols: int = 6, logy: bool = False,
                                title: str | None = None) -> Figure:
    """Per quantized layer, the weight histogram against Laplace/Gaussian/gen-Gaussian fits: is V2's Laplace prior right?"""
    layers = layer_weights(model) if isinstance(model, nn.Module) else dict(model)
    if max_layers is not None:
        layers = dict(list(layers.items())[:max_layers])
    return histograms_with_fits(layers, bins=bins, ncols=ncols, logy=logy,
                                title=title or "Weights per layer vs fitted laws" + (" (log density)" if logy else ""))


def channel_histograms_with_fits(weight: Tensor, channels: int | Sequence[int] = 8, layer: str = "",
                                 bins: int = 30, ncols: int = 4, logy: bool = False,
                                 title: str | None = None) -> Figure:
    """Per output channel of one layer, histogram against the three laws: DMBQ picks a code per channel."""
    w = weight.detach().reshape(weight.shape[0], -1)
    index = list(range(min(channels, w.shape[0]))) if isinstance(channels, int) else list(channels)
    samples = {f"{layer} ch {i}".strip(): w[i] for i in index}
    return histograms_with_fits(samples, bins=bins, ncols=ncols, logy=logy,
                                title=title or f"Per-channel weights of {layer or 'one layer'} vs fitted laws")


@_styled
def qq_plot(samples: Mapping[str, ArrayLike] | ArrayLike, laws: Sequence[str] = ("laplace", "gaussian", "gennorm"),
            points: int = 400, title: str | None = None) -> Figure:
    """Quantile-quantile plots of each sample against each fitted law: the tails show which prior is right."""
    if not isinstance(samples, Mapping):
        samples = {"weights": samples}
    fig, axes = _subplots(len(samples), len(laws), figsize=(2.9 * len(laws), 2.7 * len(samples)),
                             squeeze=False)
    p = (np.arange(points) + 0.5) / points
    for r, (name, w) in enumerate(samples.items()):
        x = _numpy(w)
        fits = fit_laws(x)
        empirical = np.quantile(x, p)
        for c, law in enumerate(laws):
            ax = axes[r, c]
            theory = fits[law].ppf(p)
            lo, hi = min(theory.min(), empirical.min()), max(theory.max(), empirical.max())
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls=":")
            ax.scatter(theory, empirical, s=6, color=color(law), alpha=0.8, linewidths=0)
            beta = f" β={fits[law].args[0]:.2f}" if law == "gennorm" else ""
            ax.set_title(f"{name} vs {LAW_LABELS[law]}{beta}", fontsize=8.5)
            if r == len(samples) - 1:
                ax.set_xlabel("fitted-law quantile")
            if c == 0:
                ax.set_ylabel("sample quantile")
            ax.tick_params(labelsize=7.5)
    fig.suptitle(title or "Q-Q plots against fitted laws (on the diagonal = the law fits)")
    return fig


@_styled
def shape_statistic_per_channel(layers: nn.Module | Mapping[str, Tensor], title: str | None = None) -> Figure:
    """mean|w|/rms(w) of every output channel per layer, with Laplace/Gaussian/uniform marked: what the lookup sees."""
    layers = layer_weights(layers) if isinstance(layers, nn.Module) else layers
    names = list(layers)
    per_layer = []
    for w in layers.values():
        w = w.reshape(w.shape[0], -1).double()
        per_layer.append(shape_statistic(w)[1].numpy())
    fig, ax = _subplots(figsize=(max(6.0, 0.45 * len(names) + 2.5), 4.4))
    ax.boxplot(per_layer, positions=range(len(names)), widths=0.6, showfliers=False, patch_artist=True,
               boxprops={"facecolor": "0.93", "color": "0.6"}, medianprops={"color": "0.3"},
               whiskerprops={"color": "0.6"}, capprops={"color": "0.6"})
    rng = np.random.default_rng(0)
    for i, stat in enumerate(per_layer):
        ax.scatter(i + rng.uniform(-0.22, 0.22, stat.size), stat, s=6, color=color("lookup"), alpha=0.7,
                   linewidths=0, zorder=3)
    references = [(float(shape_stat_of_beta(1.0)), "laplace", "Laplace (β=1)", "--"),
                  (float(shape_stat_of_beta(2.0)), "gaussian", "Gaussian (β=2)", "--"),
                  (math.sqrt(3) / 2, "uniform_law", "uniform (β→∞)", ":")]
    for value, key, label, ls in references:
        ax.axhline(value, color=COLORS.get(key, "0.4"), ls=ls, lw=1.2, label=f"{label}: {value:.3f}")
    everything = np.concatenate(per_layer + [np.array([r[0] for r in references])])
    pad = 0.04 * (everything.max() - everything.min())
    ax.set_ylim(everything.min() - pad, everything.max() + pad)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7.5)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("mean|w| / rms(w) per channel")
    betas = np.array([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0])
    ticks = shape_stat_of_beta(betas)
    inside = (ticks >= ax.get_ylim()[0]) & (ticks <= ax.get_ylim()[1])
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(ticks[inside])
    right.set_yticklabels([f"β={b:g}" for b in betas[inside]], fontsize=7.5)
    right.grid(False)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    ax.set_title(title or "Per-channel shape statistic mean|w| / rms(w) (right: gen.-Gaussian shape β)")
    return fig


def codebook_levels(x: ArrayLike, bits: int, codebook: str) -> np.ndarray:
    """The 2^b levels (in the units of x) a DMBQ code-book would give x treated as one weight group."""
    if bits == 0:
        return np.zeros(1)
    levels, _ = DMBQWeight(torch.as_tensor(_numpy(x), dtype=torch.float64).reshape(1, -1), 1, bits, codebook).code()
    return levels[0, : 2 ** bits].numpy()


def _relative_mse(x: np.ndarray, levels: np.ndarray) -> float:
    levels = np.sort(levels)
    return float(np.mean((x - snap(x, levels)) ** 2) / np.mean(x ** 2))


SHORT_LABELS = {"lookup": "lookup", "laplace": "Laplace (V2)", "uniform": "uniform", "pooled": "pooled",
                "per_group": "per group", "lloyd_max": "Lloyd-Max"}


@_styled
def levels_over_histogram(weights: ArrayLike, bits: int | Sequence[int] = (1, 2, 3, 4),
                          codebook: str | Sequence[str] = ("lookup", "laplace", "uniform"),
                          bound: bool = True, bins: int = 120, xlabel: str = "weight / mean|w| of its group",
                          title: str | None = None) -> Figure:
    """Each code-book's levels per bit-width under the weight histogram, with its MSE/E[w^2]: where the codes differ."""
    x = _numpy(weights)
    bits = [bits] if isinstance(bits, int) else list(bits)
    books = [codebook] if isinstance(codebook, str) else list(codebook)
    rows = books + (["lloyd_max"] if bound else [])
    fig, axes = _subplots(2, len(bits), figsize=(3.7 * len(bits), 2.6 + 0.32 * len(rows)), squeeze=False,
                          sharex="col", gridspec_kw={"height_ratios": [2.4, 0.3 * len(rows) + 0.3]})
    for c, b in enumerate(bits):
        top, bottom = axes[0, c], axes[1, c]
        all_levels = {book: codebook_levels(x, b, book) for book in books}
        if bound:
            all_levels["lloyd_max"] = lloyd_max(_subsample(x, 200_000), b)
        spread = max(float(np.quantile(np.abs(x), 0.999)) * 1.1,
                     max(float(np.abs(v).max()) for v in all_levels.values()) * 1.08)
        top.hist(x, bins=np.linspace(-spread, spread, bins), density=True, histtype="stepfilled", color="0.78",
                 edgecolor="none")
        for level in all_levels[books[0]]:
            top.axvline(level, color=color(books[0]), lw=0.9, alpha=0.8)
        for r, (name, levels) in enumerate(all_levels.items()):
            y = len(rows) - 1 - r
            clip = float(np.abs(levels).max())
            bottom.plot([-clip, clip], [y, y], color=color(name), lw=0.8, alpha=0.5)
            bottom.scatter(levels, np.full(levels.size, y), marker="|", s=110, lw=1.8, color=color(name))
            bottom.text(1.01, y, f"{_relative_mse(x, levels):.4f}", transform=bottom.get_yaxis_transform(),
                        va="center", fontsize=7.5, color=color(name))
        bottom.text(1.01, len(rows) - 0.45, "MSE/E[w²]", transform=bottom.get_yaxis_transform(),
                    va="bottom", fontsize=7, color="0.35")
        bottom.set_yticks(range(len(rows)))
        bottom.set_yticklabels([SHORT_LABELS.get(n, n) for n in reversed(rows)] if c == 0 else [], fontsize=7.5)
        for label, name in zip(bottom.get_yticklabels(), reversed(rows)):
            label.set_color(color(name))
        bottom.set_ylim(-0.6, len(rows) - 0.4)
        bottom.grid(axis="y", visible=False)
        bottom.set_xlim(-spread, spread)
        bottom.tick_params(axis="x", labelsize=7.5)
        top.set_yticklabels([])
        top.set_title(f"{b} bit{'s' if b != 1 else ''} ({2 ** b} levels)")
    fig.supxlabel(xlabel, fontsize=9)
    fig.suptitle(title or f"Code-book levels over the weight histogram (lines: {LABELS.get(books[0], books[0])})")
    return fig


@_styled
def error_table_figure(tables: Mapping, title: str | None = None) -> Figure:
    """MSE/E[w^2] vs bits per method (log y; Lloyd-Max dashed as the bound), one panel per data source."""
    tables = _as_sources(tables)
    fig, axes = _subplots(1, len(tables), figsize=(4.3 * len(tables), 3.8), squeeze=False, sharey=True)
    for ax, (source, table) in zip(axes.flat, tables.items()):
        for i, (method, row) in enumerate(table.items()):
            b = sorted(row)
            bound = method == "lloyd_max"
            ax.plot(b, [row[k] for k in b], marker="" if bound else "o", ms=4, lw=1.6 if bound else 1.3,
                    ls="--" if bound else "-", color=color(method, i), label=LABELS.get(method, method),
                    zorder=3 if bound else 2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({b for row in table.values() for b in row}))
        ax.set_xlabel("bits per weight")
        ax.set_title(source)
    axes.flat[0].set_ylabel("MSE / mean(w²)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3))
    fig.suptitle(title or "Weight quantization error by method")
    return fig


# ----------------------------------------------------------------------------- training

def _metrics_frame(metrics: Metrics) -> pd.DataFrame:
    if isinstance(metrics, pd.DataFrame):
        return metrics
    if isinstance(metrics, (str, Path)):
        return pd.read_csv(metrics)
    return pd.DataFrame(list(metrics))


@_styled
def training_curves(runs: Mapping[str, Metrics] | Sequence[Metrics], chained: bool = False,
                    title: str | None = None) -> Figure:
    """Loss, top-1 and average bits per epoch for each stage (CSV, DataFrame or list of dicts): did it train?"""
    if isinstance(runs, Mapping):
        frames = {name: _metrics_frame(m) for name, m in runs.items()}
    else:
        frames = {}
        for i, m in enumerate(runs):
            frame = _metrics_frame(m)
            frames[str(frame["stage"].iloc[0]) if "stage" in frame and len(frame) else f"run {i}"] = frame
    has_bits = any("weight_avg" in f for f in frames.values())
    panels = ["loss", "top-1 (%)"] + (["average bits"] if has_bits else [])
    fig, axes = _subplots(1, len(panels), figsize=(4.4 * len(panels), 3.5), squeeze=False)
    axes = list(axes.flat)
    offset = 0
    for i, (name, f) in enumerate(frames.items()):
        if not len(f):
            continue
        x = f["epoch"].to_numpy() + offset
        c = color(name, i)
        axes[0].plot(x, f["train_loss"], color=c, marker="o", ms=3, label=name)
        tested = f["test_top1"].notna().to_numpy()  # StageConfig.eval_every leaves some epochs unevaluated
        axes[0].plot(x[tested], f["test_loss"][tested].astype(float), color=c, ls="--", marker="s", ms=3)
        axes[1].plot(x, f["train_top1"], color=c, marker="o", ms=3)
        axes[1].plot(x[tested], f["test_top1"][tested].astype(float), color=c, ls="--", marker="s", ms=3)
        if has_bits and "weight_avg" in f:
            axes[2].plot(x, f["weight_avg"], color=c, marker="o", ms=3)
            axes[2].plot(x, f["act_avg"], color=c, ls="--", marker="^", ms=3)
        if chained:
            if offset:
                for ax in axes:  # stage boundary
                    ax.axvline(offset + 0.5, color="0.55", lw=0.9, ls=":")
            offset = x.max()
    last = max([offset] + [len(f) for f in frames.values()])
    for ax, label in zip(axes, panels):
        ax.set_ylabel(label)
        ax.set_xlabel("epoch" + (" (stages chained)" if chained else ""))
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    style = [Line2D([], [], color="0.3", marker="o", ms=3, label="train"),
             Line2D([], [], color="0.3", ls="--", marker="s", ms=3, label="test")]
    stages = axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=stages, loc="outside right upper", title="stage", fontsize=8)
    axes[1].legend(handles=style, fontsize=8)
    if has_bits:
        axes[2].legend(handles=[Line2D([], [], color="0.3", marker="o", ms=3, label="weights"),
                                Line2D([], [], color="0.3", ls="--", marker="^", ms=3, label="activations")],
                       fontsize=8)
    fig.suptitle(title or "Training curves")
    return fig


# ----------------------------------------------------------------------------- allocation

@_styled
def allocation_averages(history: Sequence[Mapping[str, Any]], targets: tuple[float, float] | None = None,
                        window: tuple[int, int] | None = None, initial: tuple[float, float] | None = (4.0, 4.0),
                        title: str | None = None) -> Figure:
    """Size-weighted average bits and groups lowered per epoch (BitAllocator.history): does LBA land on target?"""
    frame = pd.DataFrame([{k: v for k, v in r.items() if not k.endswith("_bits")} for r in history])
    fig, (top, bottom) = _subplots(2, 1, figsize=(6.8, 5.0), sharex=True,
                                      gridspec_kw={"height_ratios": [2.2, 1]})
    epochs = frame["epoch"].to_numpy()  # 1-based, as the logs count them
    for i, kind in enumerate(("weight", "act")):
        x, y = epochs, frame[f"{kind}_avg"].to_numpy()
        if initial is not None:
            x, y = np.r_[epochs[0] - 1, x], np.r_[initial[i], y]
        top.plot(x, y, marker="o", ms=4, color=color(kind), label=f"{LABELS[kind]} average")
        if targets is not None and targets[i] is not None:
            top.axhline(targets[i], color=color(kind), ls="--", lw=1, alpha=0.7,
                        label=f"{LABELS[kind]} target {targets[i]:g}")
        bottom.bar(epochs + (i - 0.5) * 0.38, frame[f"{kind}_lowered"], width=0.38, color=color(kind),
                   label=LABELS[kind])
    if window is not None:
        for ax in (top, bottom):
            ax.axvspan(window[0] + 0.5, window[1] + 1.5, color="0.93", zorder=0)  # window: 0-based epochs
        top.text(window[0] + 0.55, top.get_ylim()[1], " allocation window", va="top", fontsize=8, color="0.4")
    top.set_ylabel("average bits")
    top.legend(fontsize=8, ncol=2)
    bottom.set_ylabel("groups lowered")
    bottom.set_xlabel("epoch")
    if initial is not None:
        ticks, labels = np.r_[epochs[0] - 1, epochs], ["start"] + [str(e) for e in epochs]
        shown = np.arange(0, len(ticks), max(1, len(ticks) // 12))  # at most ~12 labels
        bottom.set_xticks(ticks[shown], [labels[i] for i in shown])
    bottom.legend(fontsize=8)
    if initial is None:
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    top.set_title(title or "Loss-guided allocation: averages per epoch")
    return fig


@_styled
def activation_clips(clips: Mapping[str, Mapping[str, float]], accuracy: Mapping[str, float] | None = None,
                     title: str | None = None) -> Figure:
    """Each layer's activation clip under several named settings (say the spec's start,
    the calibrated start, and where training took them), one row per layer, with each
    setting's top-1 in the legend when given: shows which layers a fixed start misfits."""
    layers = list(next(iter(clips.values())))
    fig, ax = _subplots(figsize=(6.4, 1.3 + 0.24 * len(layers)))
    y = np.arange(len(layers))
    markers = ("s", "o", "D", "^", "v")
    for i, (name, values) in enumerate(clips.items()):
        label = name if accuracy is None or name not in accuracy else f"{name}: top-1 {accuracy[name]:.2f}%"
        ax.plot([values[layer] for layer in layers], y, ls="none", marker=markers[i % len(markers)], ms=6,
                color=_CB[(i * 3 + 7) % len(_CB)] if i else "0.45", label=label, alpha=0.9)
    for yy, layer in zip(y, layers):  # a faint line per layer shows how far the settings lie apart
        row = [values[layer] for values in clips.values()]
        ax.plot([min(row), max(row)], [yy, yy], color="0.8", lw=1, zorder=0)
    ax.set_yticks(y)
    ax.set_yticklabels(layers, fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("activation clip (largest level)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    ax.set_title(title or "Activation clips per layer")
    return fig


def _bits_snapshots(source, kind: str) -> list[tuple[str, dict[str, list[int]], float | None]]:
    """(label, {layer: bits}, average) snapshots from a history, a model, or one {layer: bits} dict."""
    if isinstance(source, nn.Module):
        from .convert import quant_layers
        bits = {n: (l.weight_bits if kind == "weight" else l.act_bits).tolist() for n, l in quant_layers(source)}
        return [("model", bits, None)]
    if isinstance(source, Mapping):
        return [("bits", {k: list(v) for k, v in source.items()}, None)]
    return [(f"epoch {r['epoch']}", r[f"{kind}_bits"], r.get(f"{kind}_avg")) for r in source]


def _bits_colormap(vmax: int) -> tuple[ListedColormap, BoundaryNorm]:
    colors = [PRUNED_COLOR] + list(sns.color_palette("crest", vmax))
    cmap = ListedColormap(colors).with_extremes(bad=MISSING_COLOR)
    return cmap, BoundaryNorm(np.arange(-0.5, vmax + 1), vmax + 1)


@_styled
def bits_heatmap(source: Sequence[Mapping[str, Any]] | nn.Module | Mapping[str, Sequence[int]],
                 kind: str = "weight", epochs: Sequence[int] | None = None, max_panels: int = 6,
                 title: str | None = None) -> Figure:
    """Layer x channel bit-widths, as small multiples over epochs: where LBA spent and took the bits.

    `epochs` picks panels by their 1-based epoch number, as the logs and titles count them."""
    if kind not in ("weight", "act"):
        raise ValueError(f"kind must be 'weight' or 'act', got {kind!r}")
    snaps = _bits_snapshots(source, kind)
    if not snaps:
        raise ValueError("nothing to draw: the history is empty")
    if epochs is not None:
        wanted = {f"epoch {e}" for e in epochs}
        snaps = [s for s in snaps if s[0] in wanted] or snaps[-1:]
    elif len(snaps) > max_panels:
        index = np.unique(np.linspace(0, len(snaps) - 1, max_panels).round().astype(int))
        snaps = [snaps[i] for i in index]
    layers = list(snaps[0][1])
    width = max(len(b) for _, bits, _ in snaps for b in bits.values())
    vmax = max(4, max(max(b) for _, bits, _ in snaps for b in bits.values()))
    cmap, norm = _bits_colormap(vmax)
    fig, axes = _subplots(1, len(snaps), figsize=(2.0 + 2.7 * len(snaps), 1.4 + 0.22 * len(layers)),
                             squeeze=False, sharey=True)
    for ax, (label, bits, avg) in zip(axes.flat, snaps):
        grid = np.full((len(layers), width), np.nan)
        for r, name in enumerate(layers):
            grid[r, : len(bits[name])] = bits[name]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_title(label + (f" (avg {avg:.2f})" if avg is not None else ""), fontsize=9.5)
        ax.set_xlabel("output channel" if kind == "weight" else "input channel")
        ax.grid(False)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers, fontsize=7)
    bar = fig.colorbar(image, ax=list(axes.flat), ticks=range(vmax + 1), fraction=0.03, pad=0.02)
    bar.set_label("bits (0 = pruned)")
    fig.suptitle(title or f"{LABELS[kind].capitalize()} bit-width per layer and channel")
    return fig


def _pruned_frame(source) -> pd.DataFrame:
    """Per layer: groups and zero-bit groups of weights and activations."""
    if isinstance(source, pd.DataFrame):  # dambq.bit_report
        frame = source[~source["fixed_8bit"]] if "fixed_8bit" in source else source
        return pd.DataFrame({"weight_groups": frame["weight_groups"], "weight_pruned": frame["pruned_groups"],
                             "act_groups": frame["act_channels"], "act_pruned": frame["pruned_channels"]})
    snaps = {kind: _bits_snapshots(source, kind)[-1][1] for kind in ("weight", "act")}
    rows = {name: {"weight_groups": len(w), "weight_pruned": sum(b == 0 for b in w),
                   "act_groups": len(snaps["act"][name]), "act_pruned": sum(b == 0 for b in snaps["act"][name])}
            for name, w in snaps["weight"].items()}
    return pd.DataFrame.from_dict(rows, orient="index")


@_styled
def pruned_channels(source: pd.DataFrame | nn.Module | Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Share of zero-bit (pruned) weight groups and activation channels per layer, and over epochs for a history."""
    frame = _pruned_frame(source)
    is_history = not isinstance(source, (pd.DataFrame, nn.Module))
    ncols = 2 if is_history else 1
    fig, axes = _subplots(1, ncols, figsize=(5.2 * ncols + 1, 1.2 + 0.24 * len(frame)), squeeze=False)
    ax = axes[0, 0]
    y = np.arange(len(frame))
    for i, kind in enumerate(("weight", "act")):
        share = frame[f"{kind}_pruned"] / frame[f"{kind}_groups"]
        ax.barh(y + (i - 0.5) * 0.4, share, height=0.4, color=color(kind), label=LABELS[kind])
        for yy, s, n, g in zip(y, share, frame[f"{kind}_pruned"], frame[f"{kind}_groups"]):
            if n:
                ax.text(s, yy + (i - 0.5) * 0.4, f" {n}/{g}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(frame.index, fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlim(0, max(0.1, float((frame["weight_pruned"] / frame["weight_groups"]).max()) * 1.25,
                       float((frame["act_pruned"] / frame["act_groups"]).max()) * 1.25))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    ax.set_xlabel("share at 0 bits")
    ax.legend(fontsize=8, loc="lower right")
    total_w, total_a = int(frame["weight_pruned"].sum()), int(frame["act_pruned"].sum())
    ax.set_title(f"Per layer\n(in all: {total_w} weight groups, {total_a} activation channels)")
    if total_w + total_a == 0:
        ax.text(0.5, 0.5, "no group at 0 bits", transform=ax.transAxes, ha="center", va="center",
                fontsize=10, color="0.4", bbox={"facecolor": "white", "edgecolor": "0.8"})
    if is_history:
        over = axes[0, 1]
        for kind in ("weight", "act"):
            counts = [sum(b == 0 for bits in r[f"{kind}_bits"].values() for b in bits) for r in source]
            over.plot([r["epoch"] for r in source], counts, marker="o", ms=4, color=color(kind), label=LABELS[kind])
        over.set_xlabel("epoch")
        over.set_ylabel("groups at 0 bits")
        over.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        over.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        over.set_ylim(bottom=-0.05 * max(1, over.get_ylim()[1]), top=max(1, over.get_ylim()[1]))
        over.legend(fontsize=8)
        over.set_title("Over epochs")
    fig.suptitle(title or "Channels pruned by the allocation (0 bits)")
    return fig


@_styled
def accuracy_vs_bits(points: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] | None = None,
                     title: str | None = None) -> Figure:
    """Top-1 vs average weight bits, each point labelled W/A (dicts: label, weight_bits, act_bits, top1, [stage])."""
    fig, ax = _subplots(figsize=(7.4, 4.6))
    groups = [("this run", points, "o", True)] + ([("paper / V2 code", reference, "D", False)] if reference else [])
    # points that would sit on each other (same bits, top-1 within 0.3) are spread sideways,
    # so that no marker hides another (W4A4 DMBQ and W4A4 uniform often land together)
    dodge: dict[int, float] = {}
    near: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        near.setdefault((round(p["weight_bits"] / 0.05), round(p["top1"] / 0.3)), []).append(i)
    for members in near.values():
        for j, i in enumerate(members):
            dodge[i] = 0.07 * (j - (len(members) - 1) / 2)
    for group, pts, marker, filled in groups:
        for i, p in enumerate(pts):
            c = color(p.get("stage", p.get("label", "")), i) if filled else "0.45"
            ax.scatter(p["weight_bits"] + (dodge.get(i, 0.0) if filled else 0.0), p["top1"], s=55, marker=marker, color=c if filled else "white",
                       edgecolors=c, linewidths=1.5, zorder=3)
    # labels: this run's to the right, references' to the left; points at the same bits whose
    # labels would overlap are pushed apart vertically (at least 10 points between lines)
    low, high = ax.get_ylim()
    points_per_unit = ax.bbox.height * 72 / fig.dpi / max(high - low, 1e-9)
    for group, pts, marker, filled in groups:
        placed: dict[float, float] = {}  # x -> lowest label position so far (in points)
        for i, p in sorted(enumerate(pts), key=lambda ip: -ip[1]["top1"]):
            c = color(p.get("stage", p.get("label", "")), i) if filled else "0.45"
            text = f"{p['label']} (W{p['weight_bits']:.2f}A{p['act_bits']:.2f})" if filled else p["label"]
            x, y = round(p["weight_bits"], 1), p["top1"] * points_per_unit
            label_y = min(y, placed[x] - 10) if x in placed else y
            placed[x] = label_y
            ax.annotate(text, (p["weight_bits"], p["top1"]), textcoords="offset points",
                        xytext=(7 if filled else -7, label_y - y), ha="left" if filled else "right",
                        va="center", fontsize=7.5, color=c)
    handles = [Line2D([], [], marker=m, ls="", color="0.3", markerfacecolor="0.3" if f else "white", label=g)
               for g, _, m, f in groups]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles))
    ax.set_xlabel("average weight bits (size-weighted, first/last layer excluded)")
    ax.set_ylabel("top-1 (%)")
    xs = [p["weight_bits"] for _, pts, _, _ in groups for p in pts]
    ax.set_xlim(min(xs) - (1.6 if reference else 0.4), max(xs) + 1.6)
    ax.set_title(title or "Accuracy vs bits")
    return fig


@_styled
def allocation_frontier(rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] | None = None,
                        title: str | None = None) -> Figure:
    """Top-1 against average weight bits per allocation method (rows: method, target, seed, top1,
    weight_bits), seed range as error bars, the paper's points hollow (left); the same runs per
    target with the methods side by side on their own scale (right).

    Why two panels: the paper's points sit 6-8 points above a short CPU schedule, and on one
    axis the methods' differences (about a point) and their seed ranges shrink to a dot."""
    frame = pd.DataFrame(rows)
    fig, (ax, zoom) = _subplots(1, 2, figsize=(11, 4.6), width_ratios=[3, 2])
    methods = list(dict.fromkeys(frame["method"]))
    targets = sorted(dict.fromkeys(frame["target"]),
                     key=lambda t: -frame.loc[frame["target"] == t, "weight_bits"].mean())
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        group = frame[frame["method"] == method].groupby("target")
        x, y = group["weight_bits"].mean(), group["top1"].mean()
        low, high = y - group["top1"].min(), group["top1"].max() - y
        order = np.argsort(x.to_numpy())
        style = dict(marker="o", ms=5, capsize=3, color=color(f"alloc:{method}", i))
        fewest, most = group.size().min(), group.size().max()  # a target with one run has no error bar
        runs = f"{most}" if fewest == most else f"{fewest}-{most}"
        ax.errorbar(x.to_numpy()[order] + 0.03 * (i - (len(methods) - 1) / 2), y.to_numpy()[order],
                    yerr=[low.to_numpy()[order], high.to_numpy()[order]],
                    label=f"{method} ({runs} runs per target)", **style)
        at = [targets.index(t) + width * (i - (len(methods) - 1) / 2) for t in y.index]
        zoom.errorbar(at, y.to_numpy(), yerr=[low.to_numpy(), high.to_numpy()], ls="none", **style)
    bits = list(frame["weight_bits"]) + [p["weight_bits"] for p in reference or []]
    middle = (min(bits) + max(bits)) / 2
    for p in reference or []:
        ax.scatter(p["weight_bits"], p["top1"], s=50, marker="D", facecolors="white", edgecolors="0.45", zorder=3)
        left = p["weight_bits"] > middle  # the label on the inner side: at the axis's edge it was cut off
        ax.annotate(p["label"], (p["weight_bits"], p["top1"]), textcoords="offset points",
                    xytext=(-6 if left else 6, 0), ha="right" if left else "left", va="center", fontsize=7.5,
                    color="0.45")
    ax.set_xlabel("average weight bits (size-weighted, first/last layer excluded)")
    ax.set_ylabel("top-1 (%), mean and range over runs")
    ax.legend(fontsize=8)
    ax.set_title(title or "Allocation frontier")
    zoom.set_xticks(range(len(targets)), targets)
    zoom.set_xlim(-0.5, len(targets) - 0.5)
    zoom.set_ylabel("top-1 (%), the same runs")
    zoom.set_title("per target, methods side by side")
    return fig


# ------------------------------------------------------------------------------ deployment

@_styled
def packed_sizes_per_layer(packed: nn.Module, float_model: nn.Module | None = None,
                           title: str | None = None) -> Figure:
    """Bytes per layer of a packed model (`dambq.load_packed`), stacked by part, beside the fp32
    weights of the same layer: where the bytes of a deployable model go."""
    from .export import PackedLayer
    rows = []
    for name, m in packed.named_modules():
        if not isinstance(m, PackedLayer):
            continue
        weights = m.int8.numel() if hasattr(m, "int8") else m.planes.numel()
        scales = sum(t.numel() * t.element_size() for k, t in m.named_buffers()
                     if k not in ("planes", "int8", "bias"))
        rows.append({"layer": name, "weights": weights, "scales": scales, "bias": m.bias.numel() * 4,
                     "fp32": 4 * math.prod(m.weight_shape)})
    frame = pd.DataFrame(rows)
    fig, ax = _subplots(figsize=(max(6.5, 0.42 * len(frame) + 2.5), 4.2))
    x = np.arange(len(frame))
    ax.bar(x - 0.2, frame["fp32"], width=0.38, color="0.8", label="fp32 weights")
    bottom = np.zeros(len(frame))
    for i, (part, key) in enumerate((("sign planes / int8", "weights"), ("scales, entries, ranges", "scales"),
                                     ("bias", "bias"))):
        ax.bar(x + 0.2, frame[key], width=0.38, bottom=bottom, color=color(key, i + 2), label=part)
        bottom += frame[key].to_numpy()
    ax.set_yscale("log")
    ax.set_xticks(x, frame["layer"], rotation=75, fontsize=7)
    ax.set_ylabel("bytes (log scale)")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title or "Packed bytes per layer against fp32 weights")
    return fig


@_styled
def bit_planes(packed: nn.Module, layer: str, channel: int = 0, max_inputs: int = 16,
               title: str | None = None) -> Figure:
    """The +-1 sign planes of one output channel of a packed conv: one row per plane (with its
    coefficient a_i * clip), one column per input channel, each a k x k kernel."""
    module = packed.get_submodule(layer)
    planes, alpha = module.plane_weights()
    bits = int(module.group_bits[channel])
    if bits == 0:
        raise ValueError(f"channel {channel} of {layer} has 0 bits: nothing is stored for it")
    inputs = min(max_inputs, planes.shape[2])
    fig, axes = _subplots(bits, inputs, figsize=(0.55 * inputs + 1.2, 0.62 * bits + 0.9), squeeze=False)
    cmap = ListedColormap(["#3b4cc0", "#f7f7f7", "#b40426"])
    for i in range(bits):
        for j in range(inputs):
            ax = axes[i, j]
            kernel = planes[i, channel, j].reshape(planes.shape[3], -1).numpy()
            ax.imshow(kernel, cmap=cmap, vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{float(alpha[i, channel]):+.3f}", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title or f"{layer}, output channel {channel}: {bits} sign planes (blue -1, red +1; "
                          "row label: its coefficient)", fontsize=9)
    return fig


__all__ = ["save", "color", "layer_weights", "pooled_unit_weights", "fit_laws", "law_fit_table",
           "error_table_frame", "codebook_levels", "histograms_with_fits", "weight_histograms_with_fits",
           "channel_histograms_with_fits", "qq_plot", "shape_statistic_per_channel", "levels_over_histogram",
           "error_table_figure", "training_curves", "allocation_averages", "activation_clips", "bits_heatmap", "pruned_channels",
           "accuracy_vs_bits", "allocation_frontier", "packed_sizes_per_layer", "bit_planes"]
