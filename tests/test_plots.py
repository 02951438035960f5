"""Every plotting function returns a Figure on small synthetic input, and save() writes a PNG."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from dambq import plots  # noqa: E402
from dambq.analysis import error_table, sample_groups  # noqa: E402
from dambq.convert import convert  # noqa: E402

# Where to keep the test figures for a look (off by default: a temporary folder).
KEEP = os.environ.get("DAMBQ_TEST_FIGURES")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def out_dir(tmp_path):
    return KEEP or tmp_path


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6, 4))


def fake_history(epochs: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    history = []
    for e in range(epochs):
        w = {f"layer{i}": torch.randint(max(0, 3 - e), 5, (8 + 4 * i,), generator=g).tolist() for i in range(3)}
        a = {f"layer{i}": torch.randint(max(1, 3 - e), 5, (4 + 4 * i,), generator=g).tolist() for i in range(3)}
        history.append({"epoch": e + 1, "weight_avg": 4 - 0.6 * (e + 1), "weight_lowered": 10 - e, "weight_bits": w,
                        "act_avg": 4 - 0.5 * (e + 1), "act_lowered": 5 + e, "act_bits": a})
    return history


def fake_metrics(stage: str, epochs: int = 3, quantized: bool = True) -> list[dict]:
    rows = []
    for e in range(epochs):
        row = {"stage": stage, "epoch": e + 1, "train_loss": 2 - 0.3 * e, "test_loss": 2.1 - 0.25 * e,
               "train_top1": 30 + 10 * e, "test_top1": 28 + 9 * e}
        if quantized:
            row.update(weight_avg=4.0 - 0.5 * e, act_avg=4.0 - 0.4 * e)
        rows.append(row)
    return rows


def check(fig, out_dir, name):
    assert isinstance(fig, Figure)
    path = plots.save(fig, name, out_dir)
    assert path.exists() and path.stat().st_size > 1000


def test_weight_histograms_with_fits(out_dir):
    check(plots.weight_histograms_with_fits(tiny_model()), out_dir, "hist")
    check(plots.weight_histograms_with_fits(tiny_model(), logy=True, max_layers=1), out_dir, "hist_log")


def test_channel_histograms_and_law_table(out_dir):
    w = plots.layer_weights(tiny_model())["2"]
    check(plots.channel_histograms_with_fits(w, channels=4, layer="2"), out_dir, "channels")
    table = plots.law_fit_table({"a": sample_groups("laplace")[0], "b": sample_groups("gaussian")[0]})
    assert table.loc["a", "best_law"] == "Laplace" and table.loc["b", "best_law"] in ("Gaussian", "gen. Gaussian")


def test_qq_plot(out_dir):
    check(plots.qq_plot({"laplace": sample_groups("laplace")[0], "gaussian": sample_groups("gaussian")[0]}),
          out_dir, "qq")
    check(plots.qq_plot(np.random.default_rng(0).normal(size=500)), out_dir, "qq_single")


def test_shape_statistic_per_channel(out_dir):
    check(plots.shape_statistic_per_channel(tiny_model()), out_dir, "shape")


def test_levels_over_histogram(out_dir):
    x = plots.pooled_unit_weights(sample_groups("gaussian"))
    check(plots.levels_over_histogram(x), out_dir, "levels")
    check(plots.levels_over_histogram(x, bits=2, codebook="laplace", bound=False), out_dir, "levels_one")
    levels = plots.codebook_levels(x, 2, "laplace")
    np.testing.assert_allclose(levels, np.array([-1, -0.2246, 0.2246, 1]) * 2.6, atol=1e-3)


def test_error_table_figure_and_frame(out_dir):
    table = error_table(sample_groups("gaussian", groups=4, size=64), bits_range=(1, 2),
                        methods=("lookup", "uniform", "lloyd_max"))
    check(plots.error_table_figure(table), out_dir, "error_one")
    as_json = {m: {str(b): v for b, v in row.items()} for m, row in table.items()}
    check(plots.error_table_figure({"a": table, "b": as_json}), out_dir, "error_two")
    frame = plots.error_table_frame({"a": table})
    assert list(frame.columns) == ["b=1", "b=2"] and frame.shape == (3, 2)


def test_training_curves(out_dir, tmp_path):
    path = tmp_path / "w4a4.csv"
    pd.DataFrame(fake_metrics("w4a4")).to_csv(path, index=False)
    check(plots.training_curves({"float": fake_metrics("float", 4, False), "w4a4": path}), out_dir, "curves")
    check(plots.training_curves([fake_metrics("float", 2, False), pd.DataFrame(fake_metrics("lba"))],
                                chained=True), out_dir, "curves_chained")
    # epochs StageConfig.eval_every skipped (test top-1 None, an empty CSV cell) leave gaps, not a failure
    sparse = fake_metrics("float", 4, False)
    for record in sparse[:-1]:
        record["test_top1"] = record["test_loss"] = None
    pd.DataFrame(sparse).to_csv(path, index=False)
    fig = plots.training_curves({"from records": sparse, "from a CSV": path})
    assert [len(line.get_xdata()) for line in fig.axes[1].lines] == [4, 1, 4, 1]  # train every epoch, test the last


def test_allocation_plots(out_dir):
    history = fake_history()
    check(plots.allocation_averages(history, targets=(2.0, 2.0), window=(0, 1)), out_dir, "averages")
    check(plots.bits_heatmap(history), out_dir, "heatmap_weight")
    check(plots.bits_heatmap(history, kind="act", max_panels=2), out_dir, "heatmap_act")
    check(plots.pruned_channels(history), out_dir, "pruned_history")
    with pytest.raises(ValueError):
        plots.bits_heatmap(history, kind="bias")


def test_plots_from_a_converted_model(out_dir):
    from dambq import bit_report

    model = convert(tiny_model(), weight_bits=2, act_bits=2)
    model(torch.randn(2, 3, 7, 7))  # sets the activation sizes the report uses
    check(plots.bits_heatmap(model), out_dir, "heatmap_model")
    check(plots.pruned_channels(model), out_dir, "pruned_model")
    check(plots.pruned_channels(bit_report(model)), out_dir, "pruned_report")


def test_accuracy_vs_bits(out_dir):
    points = [{"label": "W4A4", "stage": "w4a4", "weight_bits": 4.0, "act_bits": 4.0, "top1": 80.0},
              {"label": "LBA", "stage": "lba", "weight_bits": 2.0, "act_bits": 2.0, "top1": 75.0}]
    check(plots.accuracy_vs_bits(points, reference=[{"label": "paper", "weight_bits": 2.0, "act_bits": 2.0,
                                                      "top1": 91.69}]), out_dir, "accuracy")


def test_activation_clips(out_dir):
    from dambq.convert import act_clips
    model = convert(tiny_model(), weight_bits=2, act_bits=2)
    start = act_clips(model)
    assert start == {"2": 3.0, "4": 3.0}  # the first conv and the linear stay 8-bit: no learnable clip
    fig = plots.activation_clips({"spec": start, "calibrated": {"2": 1.2, "4": 2.0}, "trained": {"2": 1.5, "4": 2.2}},
                                 accuracy={"spec": 50.0, "trained": 70.0})
    check(fig, out_dir, "activation_clips")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["spec: top-1 50.00%", "calibrated", "trained: top-1 70.00%"]


def test_packed_model_figures(out_dir):
    import dambq
    from dambq.export import pack_model
    q = dambq.convert(tiny_model(), 3, 3).eval()
    q[2].set_bits(weight_bits=torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]))
    packed = pack_model(q)
    check(plots.packed_sizes_per_layer(packed), out_dir, "packed_sizes")
    check(plots.bit_planes(packed, "2", channel=3), out_dir, "bit_planes")
    with pytest.raises(ValueError, match="0 bits"):
        plots.bit_planes(packed, "2", channel=0)


def test_allocation_frontier_figure(out_dir):
    rows = [{"method": m, "target": t, "seed": s, "top1": 85 - 2 * (2 - w) - (m != "lba") + 0.1 * s,
             "weight_bits": w, "act_bits": 2.0}
            for m in ("lba", "fisher", "random", "uniform") for t, w in (("W2.0A2.0", 2.0), ("W1.0A2.0", 1.0))
            for s in (0, 1)]
    fig = plots.allocation_frontier(rows, reference=[{"label": "paper", "weight_bits": 2.0, "top1": 91.7}])
    check(fig, out_dir, "frontier")
    # random and uniform were drawn in one green: the uniform code-book's colour, found by random's cycle index too
    colours = {str(line.get_color()) for line in fig.axes[0].get_lines() if line.get_marker() == "o"}
    assert len(colours) == 4, colours
    # the legend said "lba (3 runs per target)" with 1, 3 and 1 runs at its three targets (figure 03, quick)
    fewer = [r for r in rows if not (r["method"] == "lba" and r["target"] == "W1.0A2.0" and r["seed"] == 1)]
    legend = [t.get_text() for t in plots.allocation_frontier(fewer).axes[0].get_legend().get_texts()]
    assert legend == ["lba (1-2 runs per target)", "fisher (2 runs per target)", "random (2 runs per target)",
                      "uniform (2 runs per target)"], legend
    # a paper point at the left edge had its label drawn leftwards, off the axes
    fig = plots.allocation_frontier(rows, reference=[{"label": "paper W1", "weight_bits": 1.0, "top1": 90.4},
                                                     {"label": "paper W4", "weight_bits": 4.0, "top1": 92.5}])
    assert [t.get_ha() for t in fig.axes[0].texts] == ["left", "right"]
