"""Weight-only quantization (the paper's A32 rows) and the authors' networks."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dambq
from dambq.convert import quant_layers
from dambq.models import ConvShortcut, build_model
from dambq.pipeline import main, run_stage
from dambq.profiles import get_profile


def test_weight_only_conversion_leaves_every_input_float():
    torch.manual_seed(0)
    model = dambq.convert(build_model("resnet20"), act_bits=None).eval()
    x = torch.rand(2, 16, 8, 8)
    layer = model.layer1[0].conv1
    expected = F.conv2d(x, layer.quantized_weight(), None, 1, 1)
    assert torch.equal(layer(x), expected)  # the input is not quantized
    stem = model.conv1  # the 8-bit layers' inputs stay float too
    image = torch.randn(2, 3, 8, 8)
    assert torch.equal(stem(image), F.conv2d(image, stem.quantized_weight(), None, 1, 1))
    model(torch.randn(2, 3, 32, 32))
    assert dambq.average_bits(model) == (4.0, 32.0)
    assert set(dambq.bit_report(model)["act_bits_mean"]) == {32.0}
    with pytest.raises(ValueError, match="weight-only"):
        layer.set_bits(act_bits=2)


def test_weight_only_allocation_lands_on_the_weight_target_and_refuses_an_act_target():
    torch.manual_seed(0)
    model = dambq.convert(build_model("resnet20"), act_bits=None)
    with pytest.raises(ValueError, match="act_target=None"):
        dambq.BitAllocator(model, weight_target=2.0, act_target=2.0)
    allocator = dambq.BitAllocator(model, weight_target=1.0, act_target=None, window=(0, 0))
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    allocator.accumulate()
    record = allocator.end_epoch(0)
    assert record["weight_avg"] <= 1.0 and record["act_avg"] == 32.0
    assert dambq.average_bits(model)[1] == 32.0


def test_weight_only_pipeline_stages_and_the_none_target(tmp_path):
    profile = get_profile("smoke")  # the profile's own data, as the command line below loads it
    for stage in ("float", "w4a32"):
        run_stage(stage, profile, tmp_path, device="cpu", progress=False)
    summary = run_stage("lba_a32", profile, tmp_path, device="cpu", progress=False,
                        weight_target=1.0, act_target=None)
    assert summary["weight_avg"] <= 1.0 and summary["act_avg"] == 32.0
    saved = json.loads((tmp_path / "lba_a32-W1.0A32.json").read_text())
    assert saved["targets"] == [1.0, None] and saved["arch"] == "resnet20"
    main(["--profile", "smoke", "--stages", "lba_a32", "--out", str(tmp_path), "--device", "cpu",
          "--weight-target", "1.0", "--act-target", "none", "--no-progress"])  # read back through the CLI


def test_authors_resnet20_quantizes_and_allocates_its_conv_shortcuts():
    model = dambq.convert(build_model("resnet20"))
    shortcuts = [name for name, _ in quant_layers(model) if ".shortcut." in name]
    assert shortcuts == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert sum(isinstance(m, ConvShortcut) for m in build_model("resnet20").modules()) == 2
    assert not any(".shortcut" in name for name, _ in quant_layers(dambq.convert(build_model("resnet20_zeropad"))))


def test_authors_vgg_small_allocates_its_two_hidden_linear_layers():
    model = build_model("vgg_small")
    assert 13.5e6 <= sum(p.numel() for p in model.parameters()) <= 14.5e6
    quantized = dambq.convert(model)
    allocated = {name for name, layer in quant_layers(quantized) if isinstance(layer, nn.Linear)}
    assert allocated == {"classifier.0", "classifier.3"}
    fixed = [name for name, layer in quant_layers(quantized, include_8bit=True) if layer.fixed_8bit]
    assert fixed == ["features.0", "classifier.6"]
    hidden = sum(quantized.get_submodule(n).weight.numel() for n in allocated)
    assert 9.3e6 <= hidden <= 9.5e6
