"""The packed format and the bit-plane forward (dambq.export)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dambq
from dambq.export import PackedFormatError, PackedLayer, load_packed, pack_bits, save_packed, unpack_bits
from dambq.models import build_model
from dambq.quantizers import DMBQWeight, UniformAct

ROOT = Path(__file__).resolve().parents[1]


def trained_like_resnet(seed: int = 0) -> nn.Module:
    """ResNet20 with BatchNorm statistics from a few batches (as a trained model has)."""
    torch.manual_seed(seed)
    model = build_model("resnet20").train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(32, 3, 32, 32))
    return model.eval()


def random_bits(model: nn.Module, seed: int, act_low: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, DMBQWeight):
            m.bits.copy_(torch.randint(0, 5, m.bits.shape, generator=g))
        elif isinstance(m, UniformAct):
            m.bits.copy_(torch.randint(act_low, 5, m.bits.shape, generator=g))


def test_bits_pack_and_unpack():
    signs = torch.tensor([1, -1, -1, 1, 1, 1, 1, 1, -1, 1, 1])
    assert torch.equal(unpack_bits(pack_bits(signs), signs.numel()), signs.float())
    assert pack_bits(signs).numel() == 2


def layer_inputs_and_outputs(q: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per quantized layer of q: its input, and its output after the BatchNorm called right after
    it (the one export folds into it), in one evaluation of x."""
    calls, hooks = [], []
    for name, m in q.named_modules():
        if hasattr(m, "weight_quant") or isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: calls.append((name, mod, i[0], o))))
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    seen = {}
    for k, (name, mod, i, o) in enumerate(calls):
        if hasattr(mod, "weight_quant"):
            after = calls[k + 1] if k + 1 < len(calls) else None
            folded = after is not None and isinstance(after[1], nn.BatchNorm2d) and after[2] is o
            seen[name] = (i, after[3] if folded else o)
    return seen


@settings(max_examples=4, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 10_000))
def test_every_packed_layer_equals_its_fake_quantized_layer_for_any_bits(seed, tmp_path_factory):
    """Each packed layer (BatchNorm folded in), fed what the fake-quantized model fed that layer,
    gives what the layer and its BatchNorm gave. Compared layer by layer and not only at the
    model's output: the folded arithmetic differs from conv-then-BN by float rounding (~1e-7),
    and an activation lying that close to a rounding boundary of its quantizer lands on the
    neighbouring level in one path and not the other, which the following layers amplify (seed 63
    of this test, before it compared layers: one constant activation 2.4962184 at 3 bits with
    range 11.649 sat 1e-7 from a level's edge; the logits differed by 7%)."""
    model = trained_like_resnet(seed % 3)
    q = dambq.convert(model, 4, 4).eval()
    dambq.calibrate_act_clips(q, torch.randn(32, 3, 32, 32))
    random_bits(q, seed)  # per-channel weight bits 0-4, activation bits 0-4
    path = tmp_path_factory.mktemp("packed") / "r20.dambq"
    save_packed(q, path)
    packed = load_packed(path)
    assert not any(isinstance(m, (nn.BatchNorm2d, dambq.export.HalfBatchNorm)) for m in packed.modules())  # all folded
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    layers = layer_inputs_and_outputs(q, x)
    assert len(layers) == sum(isinstance(m, PackedLayer) for m in packed.modules()) == 22
    with torch.no_grad():
        for name, (i, expected) in layers.items():
            got = packed.get_submodule(name.replace(".", "_"))(i)
            assert float((got - expected).norm() / expected.norm()) <= 1e-5, name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_resnet_equals_the_fake_quantized_evaluation(seed, tmp_path):
    """End to end, on inputs where no activation sits at a rounding boundary (see above)."""
    model = trained_like_resnet(seed)
    q = dambq.convert(model, 4, 4).eval()
    dambq.calibrate_act_clips(q, torch.randn(32, 3, 32, 32))
    random_bits(q, seed)
    save_packed(q, tmp_path / "r20.dambq")
    packed = load_packed(tmp_path / "r20.dambq")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, got = q(x), packed(x)
    assert float((got - expected).norm() / expected.norm()) <= 1e-4


def test_integer_form_is_exact():
    """Unsigned b-bit activation integers times +-1 weight planes, accumulated in integers, scaled
    afterwards, equal the float path."""
    torch.manual_seed(0)
    layer = dambq.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(24, 6), nn.Linear(6, 2)), 3, 3,
                          keep_8bit=None)[2].eval()
    layer.set_bits(weight_bits=torch.tensor([0, 1, 2, 3, 4, 2]), act_bits=torch.randint(1, 5, (24,)))
    with torch.no_grad():
        layer.act_quant.act_clip.fill_(2.0)
    packed = PackedLayer.from_layer(layer)
    x = torch.rand(5, 24) * 2.5
    levels, step = packed.act.integers(x)
    integers = levels.long()
    assert torch.equal(integers.float(), levels) and int(integers.max()) <= 15
    planes, alpha = packed.plane_weights()
    total = torch.zeros(5, 6, dtype=torch.float64)
    for plane, a in zip(planes, alpha):
        # per input channel the step differs: integer sums per (channel step), then scales
        for s in step.unique():
            cols = (step == s).flatten()
            exact = integers[:, cols] @ plane[:, cols].long().T  # int64 accumulation
            total += exact.double() * float(s) * a.double()
    reference = nn.functional.linear(layer.act_quant(x), layer.quantized_weight()).double()
    torch.testing.assert_close(total, reference, rtol=1e-6, atol=1e-6)


def test_zero_bit_groups_cost_nothing_and_sizes_follow_the_bits():
    q = dambq.convert(trained_like_resnet(), 2, 2).eval()
    random_bits(q, 5, act_low=1)
    for name, layer in dambq.quant_layers(q):
        packed = PackedLayer.from_layer(layer)
        per_group = math.prod(layer.weight.shape[1:])
        assert packed.planes.numel() == int(layer.weight_bits.sum()) * math.ceil(per_group / 8), name


def test_w2a2_resnet20_file_is_at_least_12x_smaller_than_the_float_state_dict(tmp_path):
    import io
    model = trained_like_resnet()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    sizes = save_packed(dambq.convert(model, 2, 2).eval(), tmp_path / "w2a2.dambq")
    assert sizes["file"] == (tmp_path / "w2a2.dambq").stat().st_size
    assert len(buffer.getvalue()) / sizes["file"] >= 12


def test_damaged_foreign_and_other_version_files_are_clear_errors(tmp_path):
    q = dambq.convert(trained_like_resnet(), 2, 2).eval()
    path = tmp_path / "m.dambq"
    save_packed(q, path)
    raw = path.read_bytes()
    (tmp_path / "flipped.dambq").write_bytes(raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:])
    (tmp_path / "short.dambq").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "other.dambq").write_bytes(raw.replace(b'"version": 1', b'"version": 9', 1))
    torch.save(q.state_dict(), tmp_path / "state.pt")
    for name, match in (("flipped", "damaged"), ("short", "damaged"), ("other", "version 9"),
                        ("state.pt", "not a packed")):
        target = tmp_path / (name if name.endswith(".pt") else f"{name}.dambq")
        with pytest.raises(PackedFormatError, match=match):
            load_packed(target)
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "missing.dambq")


def test_loads_in_a_fresh_process_without_the_model_class(tmp_path):
    q = dambq.convert(trained_like_resnet(), 2, 2).eval()
    path = tmp_path / "m.dambq"
    save_packed(q, path)
    x = torch.randn(2, 3, 32, 32)
    torch.save({"x": x, "y": q(x).detach()}, tmp_path / "io.pt")
    code = ("import sys, torch; import dambq.export as e; m = e.load_packed(sys.argv[1]); d = torch.load(sys.argv[2]); "
            "assert 'dambq.models' not in sys.modules; "
            "print(float((m(d['x']) - d['y']).abs().max()))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "io.pt")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 1e-4


def test_a_batchnorm_whose_conv_output_is_also_read_elsewhere_is_kept():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0, self.conv, self.bn, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), \
                nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(self.conv0(x))
            return self.head((self.bn(y) + y).mean((2, 3)))

    model = Twice().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    q = dambq.convert(model, 3, 4).eval()
    packed = dambq.export.pack_model(q)
    kept = [m for m in packed.modules() if isinstance(m, dambq.export.HalfBatchNorm)]
    assert len(kept) == 1 and kept[0].scale.dtype == torch.float16  # kept, in fp16
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(packed(x), q(x), rtol=1e-2, atol=1e-3)  # fp16 scale and shift


class TinyAttention(nn.Module):
    """Patches, one self-attention and one cross-attention (to a learned memory), a head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.self_attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.memory = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.self_attn(tokens, tokens, tokens, need_weights=False)[0]
        memory = self.memory(tokens)
        tokens = self.norm(tokens + self.cross(tokens, memory, memory, need_weights=False)[0])
        return self.head(tokens.mean(1))


def test_attention_packs_and_equals_the_fake_quantized_evaluation(tmp_path):
    """Self- and cross-attention: the projections are packed planes, the module keeps its forward."""
    torch.manual_seed(0)
    q = dambq.convert(TinyAttention().eval(), 2, 4).eval()
    dambq.calibrate_act_clips(q, torch.randn(16, 3, 16, 16))
    random_bits(q, 3, act_low=1)
    save_packed(q, tmp_path / "attn.dambq")
    packed = load_packed(tmp_path / "attn.dambq")
    assert sum(isinstance(m, PackedLayer) for m in packed.modules()) == 7  # patch, 2 x (in, out), memory, head
    assert not any(hasattr(m, "quantized_weight") for m in packed.modules())  # no float weight left to quantize
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = q(x)
        torch.testing.assert_close(packed(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_transformer_encoder_packs(tmp_path):
    """torch's own encoder layer (GELU, LayerNorm, residuals) around a packed attention."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True), 2,
        enable_nested_tensor=False), nn.Linear(8, 2)).eval()
    q = dambq.convert(model, 3, 4).eval()
    x = torch.randn(16, 5, 8)
    dambq.calibrate_act_clips(q, x)
    save_packed(q, tmp_path / "enc.dambq")
    with torch.no_grad():
        expected = q(x)
        torch.testing.assert_close(load_packed(tmp_path / "enc.dambq")(x), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()))


def test_a_forward_fx_cannot_trace_is_refused_clearly():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x  # Python control flow on a tensor's value

    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        save_packed(dambq.convert(Branches(), 4, 4, keep_8bit=None), "/nonexistent/x.dambq")
