"""dambq on models other than ReLU CNNs: signed inputs, attention, every layer type, and
inputs that used to fail silently (the "any model" issue; each test failed before its fix)."""
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dambq
from dambq import average_bits, calibrate_act_clips, convert
from dambq.models import build_model
from dambq.quantizers import Int8Act, UniformAct, _SignedActQuant

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def silu_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def uniform_quantizers(model):
    return [m for m in model.modules() if isinstance(m, UniformAct)]


# ------------------------------------------------------------------------ signed inputs

def test_calibration_makes_layers_with_negative_inputs_signed_and_keeps_their_negative_values():
    torch.manual_seed(0)
    images = torch.randn(32, 3, 6, 6)
    q = convert(silu_cnn(), 4, 4)
    calibrate_act_clips(q, images)
    quantizers = uniform_quantizers(q)
    assert [m.sign_mode for m in quantizers] == ["asymmetric", "asymmetric"]
    x = torch.full((1, 8, 2, 2), -0.2)
    y = quantizers[0](x)
    assert (y < 0).any()  # the unsigned quantizer made every negative input 0
    low, high = (float(t.detach()) for t in quantizers[0].range())
    assert low < 0 < high


def test_relu_networks_keep_the_unsigned_quantizer():
    torch.manual_seed(0)
    q = convert(build_model("resnet20"), 4, 4)
    calibrate_act_clips(q, torch.randn(16, 3, 32, 32))
    assert all(m.sign_mode == "unsigned" for m in uniform_quantizers(q))
    assert "act_quant.sign" not in "".join(q.state_dict())  # ReLU checkpoints keep their keys


def reference_signed(x, low, high, bits):
    """Plain-autograd signed quantizer with a straight-through round (the gradient definition)."""
    n = (2 ** bits - 1).view(1, -1, 1, 1).float()
    step = (high - low) / n
    u = ((x - low) / step).clamp(min=0)
    u = torch.minimum(u, n)
    return (u + (u.round() - u).detach()) * step + low


def test_signed_quantizer_forward_and_gradients_match_a_plain_autograd_reference():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, 5, 5, generator=gen) * 1.5).requires_grad_(True)
    bits = torch.tensor([1, 2, 4])
    low = torch.tensor(-0.7, requires_grad=True)
    high = torch.tensor(1.3, requires_grad=True)
    g = torch.randn(x.shape, generator=gen)
    y = _SignedActQuant.apply(x, low, high, (2 ** bits - 1).view(1, -1, 1, 1), None, False)
    (y * g).sum().backward()
    grads = x.grad.clone(), low.grad.clone(), high.grad.clone()
    x2, low2, high2 = (t.detach().clone().requires_grad_(True) for t in (x, low, high))
    y2 = reference_signed(x2, low2, high2, bits)
    (y2 * g).sum().backward()
    torch.testing.assert_close(y, y2.detach(), atol=1e-6, rtol=0)
    inside = ((x >= -0.7) & (x <= 1.3)).float()
    torch.testing.assert_close(grads[0], g * inside)
    torch.testing.assert_close(grads[1], low2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[2], high2.grad, rtol=1e-4, atol=1e-4)
    # 2^b levels per channel: a signed b-bit channel costs b bits
    for c, b in enumerate(bits.tolist()):
        assert len(torch.unique(y[:, c].detach())) <= 2 ** b


def test_signed_quantizer_tracks_sensitivity_and_prunes_zero_bit_channels():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    n = (2 ** torch.tensor([0, 2, 3]) - 1).view(1, -1, 1, 1)
    sensitivity = torch.zeros(3)
    low, high = torch.tensor(-1.0, requires_grad=True), torch.tensor(1.5, requires_grad=True)
    xr = x.clone().requires_grad_(True)
    y = _SignedActQuant.apply(xr, low, high, n, sensitivity, False)
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    assert torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))  # 0 bits: pruned
    expected = ((x - y.detach()) * g).sum((0, 2, 3))
    torch.testing.assert_close(sensitivity, expected, rtol=1e-5, atol=1e-5)


def test_signed_checkpoint_loads_into_a_fresh_conversion():
    torch.manual_seed(0)
    net = silu_cnn()
    q = convert(net, 4, 4)
    calibrate_act_clips(q, torch.randn(16, 3, 6, 6))
    fresh = convert(net, 4, 4)
    assert not any(m.signed for m in uniform_quantizers(fresh))
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(4, 3, 6, 6)
    assert torch.equal(fresh.eval()(x), q.eval()(x))
    assert [m.sign_mode for m in uniform_quantizers(fresh)] == ["asymmetric", "asymmetric"]


def test_act_signed_explicit_choices():
    net = silu_cnn()
    assert all(m.sign_mode == "asymmetric" for m in uniform_quantizers(convert(net, 4, 4, act_signed=True)))
    assert all(m.sign_mode == "symmetric" for m in uniform_quantizers(convert(net, 4, 4, act_signed="symmetric")))
    q = convert(net, 4, 4, act_signed=False)
    calibrate_act_clips(q, torch.randn(16, 3, 6, 6))
    assert all(m.sign_mode == "unsigned" for m in uniform_quantizers(q))  # False: never switched
    with pytest.raises(ValueError, match="act_signed"):
        convert(net, 4, 4, act_signed="yes")


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["GELU", "SiLU", "Tanh"])
def test_trained_digits_cnn_keeps_its_accuracy_at_w4a4_right_after_calibration(activation):
    """Real data (scikit-learn's bundled digits): within 2 points of float at W4A4 with no
    quantized training (before signed inputs: -3.7 GELU, -8.3 SiLU, -34 Tanh)."""
    pytest.importorskip("sklearn")
    from model_zoo import top1, train_digits
    model, (x, y, xt, yt) = train_digits(activation, seed=0)
    q = convert(model, 4, 4)
    calibrate_act_clips(q, x[:500], batch_size=100)
    assert top1(q, xt, yt) >= top1(model, xt, yt) - 2.0


def test_model_zoo_trains_a_network_on_cifar_and_measures_it():
    """benchmarks/model_zoo.py part 2 on synthetic CIFAR-shaped data (tests never download):
    a row with both errors, the 8-bit one the smaller."""
    from model_zoo import cifar_row

    from dambq.data import make_synthetic
    row = cifar_row("tiny_vit", make_synthetic(num_train=256, num_test=64), steps=2)
    assert 0 < row["A8 error"] < row["W4A4 error"] < 1
    assert 0 <= row["float top-1 (%)"] <= 100
    per_channel = [v for k, v in row.items() if "ranges per channel" in k]  # calibrated on the larger set
    assert len(per_channel) == 1 and 0 < per_channel[0] < row["W4A4 error"]
    assert 0 < row["the same, median image's error"] < 1  # the typical image, beside the all-images number
    assert 0 < row["A8 error, oracle ranges"] < row["W4A4 error"] and row["noise amplification"] > 0


def test_layer_ablation_measures_every_input_and_the_range_experiment():
    """benchmarks/layer_ablation.py on synthetic data: one error per quantized input, the
    largest first, and every range variant of the experiment (per tensor / per channel)."""
    from layer_ablation import ablate

    from dambq.data import make_synthetic
    summary, rows, ranges = ablate("tiny_vit", make_synthetic(num_train=256, num_test=64), steps=2, top=3)
    errors = [r["error, this input alone"] for r in rows]
    assert len(rows) == 3 and errors == sorted(errors, reverse=True) and all(0 <= e < 1 for e in errors)
    assert summary["layers"] >= 3 and 0 < summary["A8 error, every input"] < 1
    assert len(ranges) == 7 and all(0 <= v < 1 for k, v in ranges.items() if k != "model")


def test_calibration_spread_measures_each_calibration_set_and_widened_ranges():
    """benchmarks/calibration_spread.py on synthetic data: a row per calibration set, and
    widening moves every range outwards."""
    from calibration_spread import spread, widen

    from dambq.data import make_synthetic
    rows = spread("tiny_vit", make_synthetic(num_train=256, num_test=64), steps=2, seeds=2, sizes=(64, 128))
    assert [(r["calibration seed"], r["images"]) for r in rows] == [("zoo", 256), (1, 64), (1, 128), (2, 64), (2, 128)]
    assert all(0 < r["A8 error"] < 1 for r in rows)
    q = convert(silu_cnn(), None, 8, keep_8bit=None)
    calibrate_act_clips(q, torch.randn(16, 3, 6, 6))
    before = [tuple(float(t.detach()) for t in m.range()) for m in q.modules() if isinstance(m, UniformAct)]
    widen(q)
    after = [tuple(float(t.detach()) for t in m.range()) for m in q.modules() if isinstance(m, UniformAct)]
    assert all(a[1] > b[1] and a[0] <= b[0] for a, b in zip(after, before))


# ---------------------------------------------------------------------------- attention

@pytest.mark.parametrize("batch_first", [True, False])
def test_quantized_attention_equals_torch_with_float_projections(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    q = dambq.QuantMultiheadAttention.from_float(mha, weight_bits=None, act_bits=None).eval()
    shape = (3, 5, 16) if batch_first else (5, 3, 16)
    x, kv = torch.randn(shape), torch.randn(shape)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[:, -1] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for args in ((x, x, x), (x, kv, kv)):
        for need_weights in (True, False):
            a, wa = mha(*args, key_padding_mask=padding, attn_mask=causal, need_weights=need_weights)
            b, wb = q(*args, key_padding_mask=padding, attn_mask=causal, need_weights=need_weights)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            if need_weights:
                torch.testing.assert_close(wa, wb, atol=1e-5, rtol=1e-5)
    unbatched = torch.randn(5, 16)
    torch.testing.assert_close(mha(unbatched, unbatched, unbatched)[0], q(unbatched, unbatched, unbatched)[0],
                               atol=1e-5, rtol=1e-5)


def test_transformer_encoder_converts_and_allocates_its_attention():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu", batch_first=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Linear(16, 3))
    q = convert(model, 4, 4)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in q.modules())
    assert sum(isinstance(m, dambq.QuantMultiheadAttention) for m in q.modules()) == 2
    calibrate_act_clips(q, torch.randn(8, 6, 8))
    q.eval()(torch.randn(2, 6, 8))
    assert average_bits(q, with_share=True)[2] == 1.0
    alloc = dambq.BitAllocator(q, weight_target=3.0, act_target=3.0, window=(0, 0))
    q.train()
    q(torch.randn(4, 6, 8)).sum().backward()
    alloc.accumulate()
    alloc.end_epoch(0)
    w, a = average_bits(q)
    assert w <= 3.0 and a <= 3.0
    names = [n for n, _ in dambq.quant_layers(q)]
    assert any(n.endswith("self_attn.in_proj") for n in names) and any(n.endswith("self_attn.out_proj") for n in names)


@pytest.mark.slow
def test_torchvision_vit_converts_fully():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.vit_b_16(weights=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = convert(model, 2, 2, inplace=True)
    report = dambq.conversion_report(q)
    left = [r for r in report if r["status"] == "float" and not r["reason"].startswith("normalisation")]
    # only the class token and position embedding (added, not multiplied) stay float, and are named
    assert sorted(r["module"] for r in left) == ["(model)", "encoder"]
    assert any("pos_embedding" in str(w.message) for w in caught)
    assert dambq.quantized_weight_share(q) > 0.99


# ------------------------------------------------------------------ nothing left silently

def test_convert_warns_naming_modules_it_leaves_float_and_reports_them():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Conv1d(4, 4, 1), nn.Embedding(5, 3),
                          nn.BatchNorm2d(4), nn.Linear(3, 3))
    with pytest.warns(UserWarning, match=r"1 \(no quantized version of ConvTranspose2d\).*3 \(embedding"):
        q = convert(model)
    rows = {r["module"]: r for r in dambq.conversion_report(q)}
    assert rows["2"]["status"] == "quantized" and rows["2"]["type"] == "QuantConv1d"
    assert rows["1"]["status"] == "float" and rows["4"]["reason"].startswith("normalisation")
    assert rows["0"]["status"] == "8-bit"
    w, a, share = average_bits(q, with_share=True)
    assert 0 < share < 1  # the ConvTranspose2d and the embedding hold float weights


def test_conv1d_and_conv3d_quantize_per_channel():
    for conv, shape in ((nn.Conv1d(4, 6, 3), (2, 4, 9)), (nn.Conv3d(4, 6, 3), (2, 4, 5, 5, 5))):
        q = convert(nn.Sequential(nn.Conv2d(3, 3, 1), conv, nn.Linear(3, 3)), 3, 3, keep_8bit=None)[1]
        q.set_bits(act_bits=torch.tensor([0, 1, 2, 3]))
        x = torch.rand(shape) * 3
        y = q.act_quant(x)
        for c, b in enumerate([0, 1, 2, 3]):
            assert len(torch.unique(y[:, c])) <= 2 ** b
        assert q(x).shape == conv(x).shape


# ------------------------------------------------------------------------- robust inputs

def test_an_inf_in_a_training_batch_does_not_poison_the_8bit_range():
    quantizer = Int8Act(3).train()
    x = torch.randn(4, 3, 5, 5)
    quantizer(x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    bad[1, 1, 1, 1] = float("nan")
    quantizer(bad)
    assert math.isfinite(float(quantizer.low)) and math.isfinite(float(quantizer.high))
    quantizer(torch.full((2, 3, 2, 2), float("nan")))  # nothing finite: no change
    assert math.isfinite(float(quantizer.high))
    assert torch.isfinite(quantizer.eval()(x)).all()


def test_calibration_rejects_non_finite_data_and_changes_nothing():
    q = convert(silu_cnn(), 4, 4)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    images = torch.randn(8, 3, 6, 6)
    images[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        calibrate_act_clips(q, images)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_calibration_sets_the_8bit_input_ranges_in_one_pass():
    torch.manual_seed(0)
    q = convert(silu_cnn(), 4, 4)
    calls = []
    q.register_forward_pre_hook(lambda *_: calls.append(1))
    images = torch.randn(40, 3, 6, 6)
    calibrate_act_clips(q, images, batch_size=16)
    assert len(calls) == 3  # one pass: ceil(40 / 16) forwards, whatever the number of layers
    first = q[0].act_quant
    assert bool(first.tracked) and float(first.low) == pytest.approx(float(images.min()))
    x = torch.randn(2, 3, 6, 6)
    q.eval()
    assert not torch.equal(first(x), x)  # quantized from the first evaluation on


def test_calibration_fits_each_clip_on_at_most_sample_per_layer_values(monkeypatch):
    import dambq.calibrate as calibrate
    sizes = []
    real = calibrate.mse_clip
    monkeypatch.setattr(calibrate, "mse_clip", lambda values, bits, *a: sizes.append(values.numel()) or real(values, bits))
    q = convert(build_model("resnet20"), 4, 4)
    calibrate_act_clips(q, torch.randn(64, 3, 32, 32), batch_size=16, sample_per_layer=5000)
    assert sizes and max(sizes) <= 5000 + 4  # per batch ceil(5000 * 16 / 64), four batches


@pytest.mark.parametrize("bad", [2.5, 3.9, True, -1, 5])
def test_non_integer_or_out_of_range_bits_are_clear_errors(bad):
    with pytest.raises(ValueError, match="weight_bits"):
        convert(silu_cnn(), weight_bits=bad)
    with pytest.raises(ValueError, match="act_bits"):
        convert(silu_cnn(), act_bits=bad if bad != 5 else 9)


def test_set_bits_rejects_fractional_tensors():
    layer = convert(silu_cnn(), 4, 4, keep_8bit=None)[2]
    with pytest.raises(ValueError, match="whole numbers"):
        layer.set_bits(weight_bits=torch.full((8,), 2.5))
    layer.set_bits(weight_bits=torch.full((8,), 2.0))  # whole floats are fine
    assert layer.weight_bits.tolist() == [2] * 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_models_train(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 4))
    q = convert(model, 4, 4).to(dtype)
    calibrate_act_clips(q, torch.randn(32, 12, dtype=dtype))
    alloc = dambq.BitAllocator(q, weight_target=3.0, act_target=3.0, window=(0, 0))
    y = q.train()(torch.randn(8, 12, dtype=dtype))
    assert y.dtype == dtype
    y.float().square().mean().backward()  # failed before: "expected dtype c10::Half for 'end'"
    alloc.accumulate()
    alloc.end_epoch(0)
    for m in q.modules():  # the quantizers' state stays float32
        if isinstance(m, UniformAct):
            assert m.act_clip.dtype == torch.float32 and m.act_clip.grad is not None


def test_unbatched_conv_input_with_as_many_channels_as_rows_uses_the_channel_dim():
    layer = convert(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(4, 2, 1), nn.Linear(4, 2)), 4, 4, keep_8bit=None)[1]
    layer.set_bits(act_bits=torch.tensor([0, 1, 2, 3]))
    x = torch.rand(4, 4, 4) * 3  # (C, H, W) with C == H
    torch.testing.assert_close(layer.act_quant(x), layer.act_quant(x[None])[0])


def test_one_dimensional_linear_input_gives_finite_averages():
    q = convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)), 4, 4)
    q(torch.rand(4))
    w, a = average_bits(q)
    assert (w, a) == (4.0, 4.0)


def test_activation_only_conversion_keeps_weights_float():
    model = silu_cnn()
    q = convert(model, weight_bits=None, act_bits=8, keep_8bit=None)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(q[0].quantized_weight(), model[0].weight)
    q(x)
    assert average_bits(q) == (32.0, 8.0)
    with pytest.raises(ValueError, match="weight_target"):
        dambq.BitAllocator(q, weight_target=2.0, act_target=4.0)
