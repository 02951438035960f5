"""The quantization-error analysis orders methods as theory says it must."""
import pytest
import torch

from dambq.analysis import conv_weight_groups, error_table, format_table, sample_groups, time_per_step
from dambq.models import build_model


@pytest.fixture(scope="module")
def gaussian_table():
    return error_table(sample_groups("gaussian", groups=16, size=576), bits_range=(2, 3))


def test_bounds_and_orderings(gaussian_table):
    t = gaussian_table
    for b in (2, 3):
        assert t["lloyd_max"][b] <= t["pooled"][b] + 1e-9       # unconstrained levels bound one code
        assert t["per_group"][b] <= t["pooled"][b] + 1e-9       # fitted per group from the pooled start
        assert t["lookup"][b] < t["laplace"][b]                 # Gaussian weights: the lookup wins
        assert t["lookup"][b] <= t["pooled"][b] * 1.03          # within 3% of the best single code
    assert t["pooled"][3] < t["pooled"][2]


def test_laplace_samples_favour_the_v2_table():
    t = error_table(sample_groups("laplace", groups=16, size=576), bits_range=(2,))
    assert t["laplace"][2] <= t["uniform"][2]
    assert abs(t["lookup"][2] - t["laplace"][2]) < 0.01


def test_real_model_layers_and_table_format():
    layers = conv_weight_groups(build_model("resnet20"))
    assert len(layers) == 20 and layers[0].shape == (16, 144)   # 18 block and 2 shortcut convs: stem and fc left out
    text = format_table({"x": error_table(layers[:2], bits_range=(1,), methods=("lookup",))}, bits_range=(1,))
    assert "| x | lookup |" in text
    timing = time_per_step(layers[:2], repeats=1)
    assert set(timing) == {"lookup", "per_group"} and all(v > 0 for v in timing.values())


def test_unknown_law():
    with pytest.raises(ValueError, match="law"):
        sample_groups("cauchy")


def test_per_group_fit_survives_rows_with_few_distinct_values():
    # a row with two values gives coinciding sign planes: a singular Gram matrix
    from dambq.analysis import per_group_multibit
    torch.manual_seed(0)
    w = torch.randn(4, 64)
    w[1] = torch.where(w[1] > 0, 0.5, -0.5)
    q = per_group_multibit(w, 3)
    assert torch.isfinite(q).all()
    assert torch.allclose(q[1], w[1], atol=1e-3)
