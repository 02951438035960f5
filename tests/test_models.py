"""Shape, size and structure checks for the CIFAR models (fast: batch 2, CPU)."""

import pytest
import torch
import torch.nn as nn

from dambq.models import MODELS, BasicBlock, build_model, resnet20


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_parameter_count_matches_paper():
    assert 260_000 <= count_parameters(resnet20()) <= 280_000


@pytest.mark.parametrize("name,low,high", [
    ("resnet32", 0.45e6, 0.48e6),
    ("resnet44", 0.64e6, 0.68e6),
    ("resnet56", 0.84e6, 0.87e6),
    ("resnet110", 1.70e6, 1.75e6),
    ("vgg_small_linear", 4.6e6, 4.7e6),
    ("vgg_small", 13.5e6, 14.5e6),
    ("resnet20_zeropad", 0.26e6, 0.28e6),
])
def test_parameter_counts(name, low, high):
    assert low <= count_parameters(build_model(name)) <= high


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_num_classes():
    assert build_model("resnet20", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_model("resnet18")
    for name in MODELS:
        assert name in str(info.value)


def test_zeropad_shortcuts_have_no_parameters_and_the_authors_have_two_projections():
    blocks = [m for m in build_model("resnet20_zeropad").modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    assert all(count_parameters(block.shortcut) == 0 for block in blocks)
    projections = [b for b in resnet20().modules() if isinstance(b, BasicBlock) and count_parameters(b.shortcut)]
    assert len(projections) == 2  # where the width doubles: 16 -> 32 and 32 -> 64


@pytest.mark.parametrize("name", ["resnet20", "vgg_small"])
def test_every_conv_but_the_stem_reads_a_relu_output(name):
    """Quantizers assume non-negative conv inputs: check it on real activations."""
    model = build_model(name).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    inputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [conv.register_forward_hook(lambda m, args, out: inputs.__setitem__(m, args[0])) for conv in convs]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert inputs[convs[0]].min() < 0  # the stem sees the (normalised) image
    assert all(inputs[conv].min() >= 0 for conv in convs[1:])
    assert all(conv.bias is None for conv in convs)


def test_relus_are_modules():
    relus = [m for m in resnet20().modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * 9
