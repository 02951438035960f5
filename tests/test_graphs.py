"""CUDA graphs of the eager step (dambq.graphs): what can be checked without a GPU.

A stand-in for torch.cuda.make_graphed_callables does what the real one does to the model
(warm-up passes on the first batch, forward and backward with arbitrary output gradients) and
then runs it eagerly, so these tests check dambq's side: the warm-up leaves no trace, a capture
is redone exactly when a replay would be stale, evaluation stays eager. tests/test_cuda.py
compares real graphs with eager steps on a GPU."""
import pytest
import torch
from torch import nn

import dambq
from dambq.graphs import GraphedForward
from dambq.profiles import StageConfig
from dambq.data import make_synthetic
from dambq.train import fit, step_function, train_step


def stand_in_capture(module: nn.Module, sample_args: tuple, num_warmup_iters: int = 3, allow_unused_input=False):
    """What make_graphed_callables does to a module's state, without a GPU: warm-up passes with
    uninitialised output gradients (torch uses empty_like), then the module itself."""
    for _ in range(num_warmup_iters):
        out = module(*sample_args)
        params = [p for p in module.parameters() if p.requires_grad]
        torch.autograd.grad(out, params, grad_outputs=torch.randn_like(out) * 1e3, allow_unused=allow_unused_input)
    return module


def quantized_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return dambq.convert(net)


def test_a_graphed_step_trains_exactly_as_the_eager_one():
    # the warm-up passes move BatchNorm statistics, weight EMAs, the 8-bit input ranges and the
    # sensitivity sums; without putting them back the graphed run would differ from its first step on
    states = []
    for graphed in (False, True):
        model = quantized_net().train()
        allocator = dambq.BitAllocator(model, 2.0, 2.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step_fn = GraphedForward(model, capture=stand_in_capture) if graphed else model
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator)
            train_step(step_fn, x, y, optimizer, allocator)
        states.append((model.state_dict(), [t.clone() for kind in allocator.kinds for t in kind.sums]))
    (eager, eager_sums), (graphed, graphed_sums) = states
    assert eager.keys() == graphed.keys()
    for name in eager:
        assert torch.equal(eager[name], graphed[name]), name
    assert all(torch.equal(a, b) for a, b in zip(eager_sums, graphed_sums))


def test_capture_is_redone_only_when_a_replay_would_be_stale():
    model = quantized_net().train()
    allocator = dambq.BitAllocator(model, 2.0, 2.0)
    step_fn = GraphedForward(model, capture=stand_in_capture)
    x = torch.randn(4, 3, 8, 8)
    step_fn(x)
    step_fn(torch.randn(4, 3, 8, 8))
    assert step_fn.captures == 1  # new data of the same shape: a replay
    quantizer = model[3].act_quant
    quantizer.bits.fill_(2)  # what BitAllocator does between epochs: in place, the graph reads it
    step_fn(x)
    assert step_fn.captures == 1
    quantizer.bits = torch.full_like(quantizer.bits, 3)  # a new tensor: the graph would read the old one
    step_fn(x)
    assert step_fn.captures == 2
    quantizer.track = None  # Python state the graph baked in
    step_fn(x)
    assert step_fn.captures == 3
    step_fn(torch.randn(2, 3, 8, 8))  # another batch shape
    assert step_fn.captures == 4
    with torch.no_grad():
        step_fn(x)
    model.eval()
    step_fn(x)
    assert step_fn.captures == 4  # evaluation and no-grad calls run the model eagerly
    del allocator


def test_cuda_graphs_on_a_cpu_model_is_a_clear_error():
    model = quantized_net()
    with pytest.raises(ValueError, match="CUDA device"):
        step_function(model, True, "cuda-graphs")
    data = make_synthetic(32, 16)
    with pytest.raises(ValueError, match="CUDA device"):
        fit(model, data, StageConfig(epochs=1, lr=0.01, batch_size=16), device="cpu", progress=False,
            compile=True, compile_mode="cuda-graphs")
