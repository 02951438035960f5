"""Quantizer tests: DMBQ weights, uniform activations, the 8-bit pair, sensitivity.

The quantizers are reached through the layers (`layer.weight_quant`,
`layer.act_quant`) and every expected value is recomputed here from the spec
formulas and the code-book tables, not from the quantizer's own helpers.
"""

import copy

import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dambq import QuantConv2d, QuantLinear
from dambq.codebook import V2_LAPLACE_TABLE, build_codebook, levels_from_coefs

CODEBOOK_NAMES = ("lookup", "laplace", "uniform")


def make_conv(out_channels=8, in_channels=4, bits=4, act_bits=4, codebook="lookup", seed=0,
              granularity="channel", **kwargs):
    """A quantized 3x3 conv made from a float one with heavy-tailed (Laplace) weights,
    so that every bit-width has weights beyond its clip."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.distributions.Laplace(0.0, 0.1).sample(conv.weight.shape))
    return QuantConv2d.from_float(conv, weight_bits=bits, act_bits=act_bits, codebook=codebook,
                                  granularity=granularity, **kwargs)


def reference_levels(weight: torch.Tensor, groups: int, bits: torch.Tensor, codebook: str):
    """Per-group absolute levels [G, 2^b] (as a list) and clips [G] from the spec:
    the entry picked by mean|w|/rms(w), c = k_b(entry) * mean|w|, levels = c * table levels."""
    w = weight.detach().reshape(groups, -1).double()
    mean_abs = w.abs().mean(1)
    stat = mean_abs / w.pow(2).mean(1).sqrt()
    book = build_codebook(codebook)
    entries = book.pick(stat.float())
    levels, clips = [], []
    for g in range(groups):
        b, j = int(bits[g]), int(entries[g])
        c = float(book.clip_factor[b, j]) * float(mean_abs[g])
        clips.append(c)
        levels.append(book.levels[b, j, : 2 ** b].double() * c)
    return levels, torch.tensor(clips, dtype=torch.float64)


def mixed_bits(n: int, low: int, high: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(low, high + 1, (n,), generator=gen)
    bits[: min(n, high - low + 1)] = torch.arange(low, low + min(n, high - low + 1))  # all values present
    return bits


# ============================================================================ weights

@pytest.mark.parametrize("codebook", CODEBOOK_NAMES)
@pytest.mark.parametrize("bits", range(5))
def test_weight_quantizer_idempotent_in_eval(codebook, bits):
    layer = make_conv(bits=bits, codebook=codebook).eval()
    q1 = layer.weight_quant(layer.weight).detach()
    q2 = layer.weight_quant(q1)
    assert torch.equal(q1, q2)
    assert q1.shape == layer.weight.shape


@pytest.mark.parametrize("codebook", CODEBOOK_NAMES)
def test_weight_values_in_group_level_set_and_nearest(codebook):
    layer = make_conv(out_channels=10, in_channels=6, codebook=codebook, seed=1).eval()
    bits = mixed_bits(10, 0, 4, seed=1)
    layer.set_bits(weight_bits=bits)
    with torch.no_grad():
        q = layer.weight_quant(layer.weight).reshape(10, -1).double()
    w = layer.weight.detach().reshape(10, -1).double()
    levels, clips = reference_levels(layer.weight, 10, bits, codebook)
    for g in range(10):
        lv = levels[g]
        dist_q = (q[g][:, None] - lv[None]).abs().min(1).values
        assert torch.all(dist_q <= 1e-5 * max(clips[g].item(), 1e-3)), (g, int(bits[g]))
        # q is the nearest level of w (clipping is implied: beyond c the top level is nearest)
        nearest = (w[g][:, None] - lv[None]).abs().min(1).values
        assert torch.all((w[g] - q[g]).abs() <= nearest + 1e-5 * clips[g]), (g, int(bits[g]))
        assert len(torch.unique(q[g])) <= 2 ** int(bits[g])


def test_laplace_codebook_levels_match_spec_formula():
    """c = k_b * mean|w| and levels c * (+-a_1 +- ... +- a_b), straight from the spec table."""
    layer = make_conv(out_channels=6, codebook="laplace", seed=2).eval()
    bits = torch.tensor([0, 1, 2, 3, 4, 2])
    layer.set_bits(weight_bits=bits)
    with torch.no_grad():
        q = layer.weight_quant(layer.weight).reshape(6, -1).double()
    w = layer.weight.detach().reshape(6, -1).double()
    for g in range(6):
        coefs, k = V2_LAPLACE_TABLE[int(bits[g])]
        c = k * w[g].abs().mean()
        lv = torch.from_numpy(levels_from_coefs(coefs)) * c
        idx = (w[g][:, None] - lv[None]).abs().argmin(1)
        torch.testing.assert_close(q[g], lv[idx], atol=1e-5, rtol=1e-5)


def test_zero_bit_groups_are_exact_zeros():
    layer = make_conv(out_channels=6, bits=4).train()
    bits = torch.tensor([0, 4, 0, 2, 0, 1])
    layer.set_bits(weight_bits=bits)
    q = layer.weight_quant(layer.weight).reshape(6, -1)
    assert torch.all(q[bits == 0] == 0)
    assert torch.all(q[bits > 0].abs().sum(1) > 0)
    layer.eval()
    q = layer.weight_quant(layer.weight).reshape(6, -1)
    assert torch.all(q[bits == 0] == 0)


def test_layer_granularity_one_group():
    layer = make_conv(out_channels=6, bits=2, granularity="layer", seed=3).eval()
    assert layer.weight_bits.numel() == 1
    with torch.no_grad():
        q = layer.weight_quant(layer.weight)
    assert len(torch.unique(q)) <= 4
    levels, _ = reference_levels(layer.weight, 1, torch.tensor([2]), "lookup")
    dist = (q.reshape(-1, 1).double() - levels[0][None]).abs().min(1).values
    assert torch.all(dist < 1e-5)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_weight_ste_gradient_inside_clip(bits):
    layer = make_conv(out_channels=8, in_channels=8, bits=bits, seed=4).eval()
    w = layer.weight
    levels, clips = reference_levels(w, 8, layer.weight_bits, "lookup")
    grad_out = torch.randn_like(w)
    layer.weight_quant(w).backward(grad_out)
    inside = w.detach().reshape(8, -1).abs().double() <= clips[:, None]
    expected = grad_out * inside.reshape(w.shape)
    assert inside.any() and (~inside).any()  # the test sees both cases
    torch.testing.assert_close(w.grad, expected, atol=0, rtol=0)


def test_weight_ema_of_statistics_in_training():
    """Spec: the clip follows an EMA (decay 0.99) of mean|w| per group, during training only."""
    layer = make_conv(out_channels=4, bits=2, codebook="laplace", seed=5)
    w0 = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.mul_(2.0)
    layer.eval()
    q_eval = layer.weight_quant(layer.weight).detach()
    # eval: still the old scale, c = 2.6 * mean|w0|
    c_old = 2.6 * w0.reshape(4, -1).abs().mean(1)
    torch.testing.assert_close(q_eval.reshape(4, -1).abs().max(1).values, c_old, rtol=1e-5, atol=0)
    layer.train()
    q_train = layer.weight_quant(layer.weight).detach()
    c_new = 0.99 * c_old + 0.01 * 2.6 * 2 * w0.reshape(4, -1).abs().mean(1)
    torch.testing.assert_close(q_train.reshape(4, -1).abs().max(1).values, c_new, rtol=1e-5, atol=0)


# ============================================================================ activations

def act_reference(x, clip, bits, channel_dim=1):
    """y = round(clamp(x/a, 0, 1) * n) / n * a, per channel n = 2^b - 1 (0 bits: zeros)."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    n = (2 ** bits - 1).to(x.dtype).reshape(shape)
    y = torch.round(torch.clamp(x / clip, 0, 1) * n) / n.clamp_min(1) * clip
    return torch.where(n > 0, y, torch.zeros_like(y))


def act_input(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 2.0 + 1.0)  # negatives, inside, above 3.0


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 10_000), bits=st.lists(st.integers(0, 8), min_size=6, max_size=6))
def test_act_per_channel_levels(seed, bits):
    layer = make_conv(in_channels=6, seed=seed)
    bits = torch.tensor(bits)
    layer.set_bits(act_bits=bits)
    x = act_input((3, 6, 7, 7), seed)
    y = layer.act_quant(x).detach()
    clip = float(layer.act_quant.act_clip.detach())
    assert clip == 3.0  # spec: initial clip 3.0
    torch.testing.assert_close(y, act_reference(x, clip, bits), atol=1e-5, rtol=0)
    for c in range(6):
        values = torch.unique(y[:, c])
        assert len(values) <= 2 ** int(bits[c])
        assert values.min() >= 0 and values.max() <= clip + 1e-6
        if bits[c] == 0:
            assert torch.all(y[:, c] == 0)


def test_act_distinct_values_exactly_and_zero_channels():
    layer = make_conv(in_channels=5, seed=1)
    bits = torch.tensor([0, 1, 2, 3, 4])
    layer.set_bits(act_bits=bits)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 5, 16, 16, generator=gen) * 4.0 - 0.5  # covers [0, 3] densely
    y = layer.act_quant(x)
    for c in range(5):
        assert len(torch.unique(y[:, c])) == 2 ** int(bits[c])
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))


def test_linear_act_per_feature_bits():
    torch.manual_seed(0)
    layer = QuantLinear(4, 3, weight_bits=4, act_bits=4)
    bits = torch.tensor([0, 1, 2, 8])
    layer.set_bits(act_bits=bits)
    x = act_input((50, 4), seed=3)
    y = layer.act_quant(x).detach()
    torch.testing.assert_close(y, act_reference(x, 3.0, bits, channel_dim=1), atol=1e-5, rtol=0)
    # a 3-d input (batch, tokens, features): features are the last dim
    x3 = act_input((5, 7, 4), seed=4)
    y3 = layer.act_quant(x3).detach()
    torch.testing.assert_close(y3, act_reference(x3, 3.0, bits, channel_dim=2), atol=1e-5, rtol=0)


def test_act_layer_granularity_single_bitwidth():
    layer = make_conv(in_channels=5, granularity="layer", act_bits=2)
    assert layer.act_bits.numel() == 1
    x = act_input((2, 5, 6, 6), seed=5)
    y = layer.act_quant(x).detach()
    assert len(torch.unique(y)) <= 4
    torch.testing.assert_close(y, act_reference(x, 3.0, torch.full((5,), 2)), atol=1e-5, rtol=0)


def test_act_ste_gradient_wrt_input():
    layer = make_conv(in_channels=4)
    bits = torch.tensor([0, 1, 2, 4])
    layer.set_bits(act_bits=bits)
    with torch.no_grad():
        layer.act_quant.act_clip.fill_(2.5)
    x = act_input((3, 4, 5, 5), seed=6).requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    layer.act_quant(x).backward(g)
    inside = (x.detach() >= 0) & (x.detach() <= 2.5) & (bits > 0).reshape(1, -1, 1, 1)
    assert inside.any() and (~inside & (bits > 0).reshape(1, -1, 1, 1)).any()
    torch.testing.assert_close(x.grad, g * inside, atol=0, rtol=0)


@pytest.mark.parametrize("channel_bits", [[1, 2, 3, 4], [2, 2, 2, 2], [0, 4, 8, 1]])
def test_act_clip_gradient_matches_op_chain(channel_bits):
    layer = make_conv(in_channels=4)
    bits = torch.tensor(channel_bits)
    layer.set_bits(act_bits=bits)
    x = act_input((3, 4, 6, 6), seed=8)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    layer.act_quant(x).backward(g)
    got = layer.act_quant.act_clip.grad

    a = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    xd = x.double()
    n = (2 ** bits - 1).double().reshape(1, -1, 1, 1)
    u = torch.clamp(xd / a, 0, 1) * n
    u = u + (u.round() - u).detach()  # round with a straight-through estimator
    y = u / n.clamp_min(1) * a
    y = torch.where(n > 0, y, torch.zeros_like(y))
    (y * g.double()).sum().backward()
    assert abs(float(a.grad)) > 1e-3
    torch.testing.assert_close(got.double(), a.grad, rtol=1e-4, atol=1e-4)


def test_act_clip_gradient_finite_difference():
    """With round treated as identity the clip derivative is exact; check it against a
    central difference of the *unrounded* op chain at 8 bits (rounding error is small)."""
    layer = make_conv(in_channels=3, act_bits=8)
    x = act_input((2, 3, 4, 4), seed=10).double()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    layer.act_quant(x.float()).backward(g.float())
    got = float(layer.act_quant.act_clip.grad)

    def smooth(a):  # y = clamp(x/a, 0, 1) * a, the op chain with round replaced by identity
        return (torch.clamp(x / a, 0, 1) * a * g).sum()

    eps = 1e-4
    fd = float((smooth(3.0 + eps) - smooth(3.0 - eps)) / (2 * eps))
    assert got == pytest.approx(fd, abs=0.05 * max(1.0, abs(fd)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_act_other_dtypes_with_pruned_channels(dtype):
    """A quantized layer run in half/bfloat16/double precision (model.half(), autocast):
    a pruned (0-bit) channel is still exactly zero and nothing becomes NaN, in the
    output, the gradients, or the "next" sensitivity of a 1-bit channel."""
    layer = make_conv(in_channels=4, seed=17)
    layer.set_bits(act_bits=torch.tensor([0, 1, 2, 4]))
    aq = layer.act_quant.to(dtype)
    aq.track = "next"
    aq.step_sensitivity = torch.zeros(4, dtype=dtype)
    x = act_input((2, 4, 5, 5), seed=18).to(dtype).requires_grad_(True)
    y = aq(x)
    assert torch.isfinite(y).all()
    assert torch.all(y[:, 0] == 0)
    reference = act_reference(x.detach().double(), 3.0, torch.tensor([0, 1, 2, 4]))
    torch.testing.assert_close(y.detach().double(), reference, atol=1e-2, rtol=0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(aq.act_clip.grad).all()
    assert torch.isfinite(aq.step_sensitivity).all()


# ============================================================================ sensitivity

def _weight_loss(q: torch.Tensor, seed: int) -> torch.Tensor:
    r = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed))
    return (q * r).sum() + 0.5 * q.pow(2).sum()


@pytest.mark.parametrize("mode", ["current", "next"])
@pytest.mark.parametrize("granularity", ["channel", "layer"])
def test_weight_sensitivity_matches_reference(mode, granularity):
    layer = make_conv(out_channels=6, in_channels=4, seed=12, granularity=granularity).train()
    groups = 6 if granularity == "channel" else 1
    bits = torch.tensor([0, 1, 2, 3, 4, 4]) if groups == 6 else torch.tensor([3])
    layer.set_bits(weight_bits=bits)
    wq = layer.weight_quant
    wq.track = mode
    wq.step_sensitivity = torch.zeros(groups)
    expected = torch.zeros(groups, dtype=torch.float64)
    for step in range(2):  # accumulates over steps
        q = wq(layer.weight)
        q.retain_grad()
        _weight_loss(q, seed=step).backward()
        w = layer.weight.detach().reshape(groups, -1).double()
        qd = q.detach().reshape(groups, -1).double()
        grad = q.grad.reshape(groups, -1).double()
        if mode == "current":
            delta = w - qd
        else:  # Q_{b-1}(w) - Q_b(w), with the statistics the forward used
            lower = copy.deepcopy(layer).eval()
            lower.set_bits(weight_bits=(bits - 1).clamp_min(0))
            with torch.no_grad():
                q_next = lower.weight_quant(layer.weight).reshape(groups, -1).double()
            delta = q_next - qd
        expected += (delta * grad).sum(1)
        layer.weight.grad = None
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(wq.step_sensitivity.double(), expected, rtol=1e-4, atol=1e-5)
    if mode == "next" and groups == 6:
        assert float(wq.step_sensitivity[0]) == 0.0  # 0 bits: no lower bit-width


def test_weight_sensitivity_off_accumulates_nothing():
    layer = make_conv(out_channels=6, seed=13).train()
    wq = layer.weight_quant
    wq.step_sensitivity = torch.zeros(6)
    wq.track = None
    _weight_loss(wq(layer.weight), seed=0).backward()
    assert torch.equal(wq.step_sensitivity, torch.zeros(6))
    assert layer.weight.grad is not None


def _act_loss(y: torch.Tensor, seed: int) -> torch.Tensor:
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    return (y * r).sum() + 0.5 * y.pow(2).sum()


@pytest.mark.parametrize("mode", ["current", "next"])
def test_act_sensitivity_matches_reference_conv(mode):
    layer = make_conv(in_channels=6, seed=14)
    bits = torch.tensor([0, 1, 2, 3, 4, 8])
    layer.set_bits(act_bits=bits)
    aq = layer.act_quant
    aq.track = mode
    aq.step_sensitivity = torch.zeros(6)
    expected = torch.zeros(6, dtype=torch.float64)
    for step in range(2):
        x = act_input((3, 6, 5, 5), seed=20 + step).requires_grad_(True)
        y = aq(x)
        y.retain_grad()
        _act_loss(y, seed=step).backward()
        yd, grad = y.detach().double(), y.grad.double()
        if mode == "current":
            delta = x.detach().double() - yd
        else:
            y_next = act_reference(x.detach().double(), 3.0, (bits - 1).clamp_min(0))
            delta = y_next - yd
        expected += (delta * grad).sum((0, 2, 3))
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(aq.step_sensitivity.double(), expected, rtol=1e-4, atol=1e-4)
    if mode == "next":
        assert float(aq.step_sensitivity[0]) == 0.0


@pytest.mark.parametrize("mode", ["current", "next"])
def test_act_sensitivity_matches_reference_linear(mode):
    torch.manual_seed(0)
    layer = QuantLinear(4, 3)
    bits = torch.tensor([1, 2, 3, 4])
    layer.set_bits(act_bits=bits)
    aq = layer.act_quant
    aq.track = mode
    aq.step_sensitivity = torch.zeros(4)
    x = act_input((8, 4), seed=30).requires_grad_(True)
    y = aq(x)
    y.retain_grad()
    _act_loss(y, seed=1).backward()
    if mode == "current":
        delta = x.detach().double() - y.detach().double()
    else:
        delta = act_reference(x.detach().double(), 3.0, bits - 1) - y.detach().double()
    expected = (delta * y.grad.double()).sum(0)
    torch.testing.assert_close(aq.step_sensitivity.double(), expected, rtol=1e-4, atol=1e-4)


def test_act_sensitivity_off_accumulates_nothing():
    layer = make_conv(in_channels=6, seed=15)
    aq = layer.act_quant
    aq.step_sensitivity = torch.zeros(6)
    aq.track = None
    x = act_input((2, 6, 4, 4), seed=31).requires_grad_(True)
    _act_loss(aq(x), seed=0).backward()
    assert torch.equal(aq.step_sensitivity, torch.zeros(6))
    assert x.grad is not None


def test_sensitivity_through_layer_forward():
    """Tracking works on a whole layer's forward, with dL/dQ reached through the conv."""
    layer = make_conv(out_channels=5, in_channels=3, seed=16).train()
    layer.weight_quant.track = "current"
    layer.weight_quant.step_sensitivity = torch.zeros(5)
    layer.act_quant.track = "current"
    layer.act_quant.step_sensitivity = torch.zeros(3)
    x = act_input((2, 3, 6, 6), seed=32)
    layer(x).pow(2).sum().backward()
    assert torch.all(layer.weight_quant.step_sensitivity != 0)
    assert torch.all(layer.act_quant.step_sensitivity != 0)


# ============================================================================ 8-bit pair

def make_fixed(in_channels=3, out_channels=4, seed=0):
    torch.manual_seed(seed)
    return QuantConv2d(in_channels, out_channels, 3, padding=1, fixed_8bit=True)


def test_int8_act_passes_input_before_training():
    layer = make_fixed().eval()
    x = act_input((2, 3, 5, 5), seed=40).requires_grad_(True)
    y = layer.act_quant(x)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    # the first training forward sets the range from its batch and quantizes
    layer.train()
    y = layer.act_quant(x.detach())
    assert not torch.equal(y, x.detach())
    assert len(torch.unique(y)) <= 256
    torch.testing.assert_close(y, x.detach(), atol=(x.max() - x.min()).item() / 255, rtol=0)


def test_int8_act_batch_independent_in_eval():
    layer = make_fixed().train()
    for step in range(3):
        layer.act_quant(act_input((8, 3, 5, 5), seed=41 + step))
    layer.eval()
    x = act_input((6, 3, 5, 5), seed=50)
    x[0] *= 10.0  # an outlier sample must not change the others' outputs
    y_batch = layer.act_quant(x)
    for i in range(6):
        assert torch.equal(layer.act_quant(x[i:i + 1]), y_batch[i:i + 1]), i
    assert torch.equal(layer.act_quant(x[1:]), y_batch[1:])
    # it now quantizes: at most 256 values, and not the identity
    assert len(torch.unique(y_batch)) <= 256
    assert not torch.equal(y_batch, x)


def test_int8_act_gradient_straight_through_in_range():
    layer = make_fixed().train()
    layer.act_quant(act_input((8, 3, 5, 5), seed=42))
    layer.eval()
    x = act_input((2, 3, 5, 5), seed=43).requires_grad_(True)
    layer.act_quant(x).sum().backward()
    assert torch.all((x.grad == 0) | (x.grad == 1))
    assert (x.grad == 1).float().mean() > 0.5


def test_int8_weight_symmetric_255_levels():
    layer = make_fixed(seed=1)
    w = layer.weight.detach()
    q = layer.weight_quant(layer.weight).detach()
    step = w.abs().max() / 127
    assert len(torch.unique(q)) <= 255
    assert torch.all((q - w).abs() <= step / 2 + 1e-7)
    torch.testing.assert_close(torch.round(q / step), q / step, atol=1e-4, rtol=0)
    assert int(layer.weight_bits.unique()) == 8 and int(layer.act_bits.unique()) == 8


@pytest.mark.parametrize("signed", [False, True])
def test_activation_quantizer_hands_float32_level_counts_to_its_kernel(monkeypatch, signed):
    """UniformAct passes n = 2^b - 1 as float32 from an op of its own (dambq::level_counts): with
    int64 counts torch.compile converted them per element inside the full-size kernels
    (results/quantizer-kernel-*.md). The output equals the kernel's with int64 counts."""
    from dambq import quantizers
    seen, originals = [], {}

    def recording(original):
        def apply(x, *args):  # the level counts are the one per-channel [1, C, 1, 1] argument
            seen.extend(a for a in args if isinstance(a, torch.Tensor) and a.shape == (1, 4, 1, 1))
            return original(x, *args)
        return apply
    for fn in (quantizers._UniformActQuant, quantizers._SignedActQuant):
        originals[fn] = fn.apply
        monkeypatch.setattr(fn, "apply", recording(fn.apply))
    q = quantizers.UniformAct(4, bits=torch.tensor([0, 1, 3, 8]), init_clip=2.0, signed=signed)
    x = torch.randn(2, 4, 3, 3)
    y = q(x)
    assert len(seen) == 1 and seen[0].dtype == torch.float32
    assert seen[0].flatten().tolist() == [0.0, 1.0, 7.0, 255.0]
    int_counts = (2 ** q.bits - 1).view(1, 4, 1, 1)
    if signed:
        low, high = q.range()
        expected = originals[quantizers._SignedActQuant](x, low, high, int_counts, None, False)
    else:
        expected = originals[quantizers._UniformActQuant](x, q.act_clip, int_counts, None, False)
    assert torch.equal(y, expected)
    assert quantizers.level_counts(torch.tensor([2, 4])).tolist() == [3.0, 15.0]


@pytest.mark.parametrize("track", [None, "current", "next", "fisher"])
@pytest.mark.parametrize("per_channel_clip", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_compiled_and_eager_activation_backward_forms_agree(track, per_channel_clip, layout):
    """The fusible backward (what torch.compile traces) and the in-place one (eager) give the
    same input and clip gradients and LBA sums, pruned channels and channels_last included."""
    from dambq.quantizers import _uniform_grads_fusible, _uniform_grads_inplace, _uniform_levels
    x = act_input((4, 6, 5, 5), seed=40).clamp_min(0).contiguous(memory_format=layout)
    grad_y = act_input((4, 6, 5, 5), seed=41).contiguous(memory_format=layout)
    n = (2 ** torch.tensor([0, 1, 2, 3, 4, 8]) - 1).float().view(1, 6, 1, 1)
    clip = torch.linspace(1.5, 3.5, 6).view(1, 6, 1, 1) if per_channel_clip else torch.tensor(3.0)
    y = _uniform_levels(x, clip, n)
    results = []
    for form in (_uniform_grads_inplace, _uniform_grads_fusible):
        sums = torch.zeros(6) if track else None
        grad_x, grad_clip = form(x, y, grad_y, clip, n, sums, track in ("next", "fisher"), track == "fisher")
        results.append((grad_x, grad_clip, sums))
    (gx_a, gc_a, s_a), (gx_b, gc_b, s_b) = results
    assert torch.equal(gx_a, gx_b)
    assert gx_a[:, 0].abs().sum() == 0 and gx_a.abs().sum() > 0  # pruned channel: no gradient
    torch.testing.assert_close(gc_a, gc_b, rtol=1e-5, atol=1e-5)
    if track:
        assert s_a.abs().sum() > 0
        torch.testing.assert_close(s_a, s_b, rtol=1e-5, atol=1e-5)
