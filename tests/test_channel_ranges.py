"""Activation ranges per input channel (convert's act_range="channel").

A layer's input quantizer can hold one learnable range per input channel, beside the
per-channel bits: networks whose channels differ in scale by orders of magnitude cannot
reach a small 8-bit error with one range per layer (results/layer-ablation.md). Expected
values are recomputed here from the quantizer formula, not from dambq's helpers.
"""
import copy

import pytest
import torch
from torch import nn

import dambq
from dambq.quantizers import UniformAct


def reference(x, low, high, n):
    """low + round(clamp((x - low) / step, 0, n)) * step per channel, 0 where n = 0; x [N, C, H, W]."""
    low, high, n = (t.float().view(1, -1, 1, 1) for t in (low, high, n))
    step = (high - low) / n.clamp_min(1)
    q = torch.minimum(((x - low) / step).clamp(min=0), n).round() * step + low
    return torch.where(n > 0, q, torch.zeros_like(q))


def scaled_channels(seed=0, c=4, negative=False):
    """Inputs whose channels differ in scale by 1000x (as after squeeze-excitation)."""
    torch.manual_seed(seed)
    scales = torch.logspace(-2, 1, c).view(1, c, 1, 1)
    x = torch.rand(8, c, 5, 5) * scales
    return x - 0.3 * scales if negative else x


@pytest.mark.parametrize("signed", [False, True])
def test_each_channel_quantizes_on_its_own_range(signed):
    q = UniformAct(channels=4, bits=torch.tensor([2, 3, 4, 0]), channel_dim=-3, range_per_channel=True)
    high = torch.tensor([0.5, 1.0, 2.0, 3.0])
    low = torch.tensor([-0.1, -0.2, 0.0, -1.0]) if signed else torch.zeros(4)
    if signed:
        q.make_signed(low=low, high=high)
    else:
        q.act_clip.data.copy_(high)
    x = scaled_channels(negative=signed)
    n = 2 ** q.bits - 1
    assert torch.allclose(q(x), reference(x, low, high, n), atol=1e-6)
    assert "ranges per channel" in repr(q)


@pytest.mark.parametrize("signed", [False, True])
def test_equal_ranges_per_channel_match_one_range_and_split_its_gradient(signed):
    """Every channel at the layer's range: the same output, input gradient and LBA sums, and the
    per-channel range gradients add up to the layer's."""
    torch.manual_seed(1)
    x = scaled_channels(negative=signed)
    one = UniformAct(channels=4, bits=torch.tensor([2, 3, 4, 1]), channel_dim=-3, init_clip=2.0,
                     signed=signed)
    many = copy.deepcopy(one)
    many.make_range_per_channel()
    outputs, grads = [], []
    for q in (one, many):
        q.track, q.step_sensitivity = "current", torch.zeros(4)
        xi = x.clone().requires_grad_(True)
        y = q(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append(y.detach())
        grads.append((xi.grad, q.step_sensitivity.clone(), q.act_clip.grad,
                      q.act_low.grad if signed else None))
    assert torch.equal(outputs[0], outputs[1])
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    assert grads[1][2].shape == (4,) and torch.allclose(grads[1][2].sum(), grads[0][2], rtol=1e-4, atol=1e-5)
    if signed:
        assert torch.allclose(grads[1][3].sum(), grads[0][3], rtol=1e-4, atol=1e-5)


def test_range_gradient_per_channel_is_the_straight_through_derivative():
    q = UniformAct(channels=3, bits=3, channel_dim=-3, range_per_channel=True)
    q.act_clip.data.copy_(torch.tensor([0.05, 0.4, 4.0]))
    x = scaled_channels(c=3).double()
    weight = torch.randn_like(x)
    (q(x) * weight).sum().backward()
    # round treated as identity: dy/dclip = (y - x) / clip inside, 1 above
    y, clip = q(x).detach(), q.act_clip.detach().double().view(1, -1, 1, 1)
    inside = (x >= 0) & (x <= clip)
    expected = (weight * torch.where(inside, (y - x) / clip, (x > clip).double())).sum((0, 2, 3))
    assert torch.allclose(q.act_clip.grad.double(), expected, atol=1e-4)


def net(activation=nn.ReLU):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), activation(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), activation(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 5))
    with torch.no_grad():  # channels 1000x apart in scale at the second conv's input, each as important
        scales = torch.logspace(-2, 1, 8)
        model[1].weight.copy_(scales)
        model[3].weight.div_(scales.view(1, -1, 1, 1))
    return model.eval()


@pytest.mark.parametrize("activation", [nn.ReLU, nn.SiLU])
def test_calibrated_ranges_per_channel_cut_the_8bit_error_where_channel_scales_differ(activation):
    model = net(activation)
    images = torch.randn(64, 3, 6, 6)
    test = torch.randn(32, 3, 6, 6)
    with torch.no_grad():
        y = model(test)
    errors = {}
    for act_range in ("layer", "channel"):
        q = dambq.convert(model, weight_bits=None, act_bits=8, keep_8bit=None, act_range=act_range).eval()
        clips = dambq.calibrate_act_clips(q, images)
        with torch.no_grad():
            errors[act_range] = float((q(test) - y).norm() / y.norm())
        if act_range == "channel":
            assert isinstance(clips["3"], (list, tuple)) and q[3].act_quant.act_clip.shape == (8,)
            assert q[3].act_quant.act_clip.max() > 100 * q[3].act_quant.act_clip.min()
    assert errors["channel"] < errors["layer"] / 3, errors


@pytest.mark.parametrize("activation", [nn.ReLU, nn.SiLU])
def test_8bit_ranges_per_channel_are_the_data_min_max_and_lower_bits_mse(activation):
    """At 8 bits an MSE clip fitted on a few thousand values per channel cuts the rare large
    inputs the sample missed (results/model-zoo.md); each range is then its channel's min / max
    over the calibration images."""
    model = net(activation)
    images = torch.randn(64, 3, 6, 6) ** 3  # heavy tails: an MSE-optimal 4-bit clip lies well inside them
    seen = {}
    hook = model[3].register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0].detach()))
    with torch.no_grad():
        model(images)
    hook.remove()
    x = seen["x"].movedim(1, 0).reshape(8, -1)
    low, high = x.amin(1), x.amax(1)
    for bits in (8, 4):
        q = dambq.convert(model, weight_bits=None, act_bits=bits, keep_8bit=None, act_range="channel").eval()
        dambq.calibrate_act_clips(q, images, batch_size=64)
        quant_low, quant_high = q[3].act_quant.range()
        if bits == 8:
            assert torch.allclose(quant_high.detach(), high, rtol=1e-6)
            expected_low = low if activation is nn.SiLU else torch.zeros_like(low)
            assert torch.allclose(quant_low.detach(), expected_low, rtol=1e-6)
        else:
            assert bool((quant_high.detach() < 0.9 * high).any())


def test_a_checkpoint_with_ranges_per_channel_loads_into_a_fresh_conversion(tmp_path):
    model = net(nn.SiLU)
    q = dambq.convert(model, 4, 4, act_range="channel")
    dambq.calibrate_act_clips(q, torch.randn(32, 3, 6, 6))
    torch.save(q.state_dict(), tmp_path / "q.pt")
    fresh = dambq.convert(model, 4, 4)  # one range per layer until the state dict says otherwise
    fresh.load_state_dict(torch.load(tmp_path / "q.pt"))
    x = torch.randn(4, 3, 6, 6)
    assert fresh[3].act_quant.range_per_channel and fresh[3].act_quant.signed
    assert torch.equal(q.eval()(x), fresh.eval()(x))


@pytest.mark.parametrize("signed", [False, True])
def test_packed_input_quantizer_keeps_ranges_per_channel(signed):
    """Layer by layer (end to end, folded BatchNorm can move a value across a rounding boundary)."""
    from dambq.export import PackedAct
    q = UniformAct(channels=4, bits=torch.tensor([2, 3, 4, 0]), channel_dim=-3, range_per_channel=True)
    high = torch.tensor([0.5, 1.0, 2.0, 3.0])
    if signed:
        q.make_signed(low=-0.3 * high, high=high)
    else:
        q.act_clip.data.copy_(high)
    x = scaled_channels(negative=signed)
    packed = PackedAct.from_quantizer(q.eval())
    assert torch.equal(packed(x), q(x)) and "ranges per channel" in repr(packed)
    levels, step = packed.integers(x)
    assert step.shape == (1, 4, 1, 1) and torch.equal(levels, levels.round())


def test_a_packed_file_keeps_ranges_per_channel(tmp_path):
    from dambq.export import load_packed, pack_model, save_packed
    q = dambq.convert(net(nn.SiLU), 4, 4, act_range="channel")
    dambq.calibrate_act_clips(q, torch.randn(32, 3, 6, 6))
    save_packed(q.eval(), tmp_path / "q.dambq")
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "q.dambq")(x), pack_model(q)(x))


def test_bad_act_range_requests_are_clear_errors():
    with pytest.raises(ValueError, match="act_range must be one of"):
        dambq.convert(net(), act_range="pixel")
    with pytest.raises(ValueError, match="granularity='channel'"):
        dambq.convert(net(), granularity="layer", act_range="channel")
    with pytest.raises(ValueError, match="per-channel bits"):
        UniformAct(channels=1, range_per_channel=True)
