"""The engine on CUDA: fit's defaults (bf16, eager, channels_last; compiled on request), no host sync in the step,
compiled LBA sums equal to eager, batch-independent fp32 evaluation.

Marked `cuda`: they skip on machines without a GPU (CI) and are what
benchmarks/gpu_lease.py runs first on a lent GPU (`pytest -m cuda`). Ordered so that the
tests without torch.compile come first: inductor takes about a minute per ResNet20 graph on
a GPU, and the first lease's test step was killed before any test had reported."""
import pytest
import torch

import dambq
from dambq.data import make_synthetic
from dambq.models import build_model
from dambq.profiles import StageConfig
from dambq.train import evaluate, fit, step_function, train_step

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def quantized_resnet20():
    torch.manual_seed(0)
    return dambq.convert(build_model("resnet20")).to(CUDA, memory_format=torch.channels_last)


def test_evaluation_is_fp32_and_batch_independent_on_cuda():
    data = make_synthetic(64, 256)
    model = quantized_resnet20()
    fit(model, data, StageConfig(epochs=1, lr=0.01, batch_size=32), device="cuda", progress=False, compile=False)
    a = evaluate(model, data.test_images, data.test_labels, CUDA, batch_size=256)
    b = evaluate(model, data.test_images, data.test_labels, CUDA, batch_size=32)
    assert abs(a["top1"] - b["top1"]) <= 100 / 256 + 1e-9


def test_cuda_graphed_steps_train_as_eager_ones_do():
    # dambq.graphs: forward and backward replayed as CUDA graphs; bits lowered in place between
    # steps (as BitAllocator does between epochs) must reach the replayed graph
    runs = []
    for mode in (None, "cuda-graphs"):
        model = quantized_resnet20()
        allocator = dambq.BitAllocator(model, 2.0, 2.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step_fn = step_function(model, mode is not None, mode)
        torch.manual_seed(1)
        losses = []
        for i in range(4):
            if i == 2:
                model.layer1[0].conv2.act_quant.bits.fill_(2)
                model.layer1[0].conv2.weight_quant.bits.fill_(2)
            x = torch.randn(64, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (64,), device=CUDA)
            losses.append(float(train_step(step_fn, x, y, optimizer, allocator, amp=True)[0]))
        runs.append((losses, torch.cat([t for kind in allocator.kinds for t in kind.sums]),
                     torch.cat([p.detach().flatten().float() for p in model.parameters()])))
    (eager_losses, eager_sums, eager_params), (graph_losses, graph_sums, graph_params) = runs
    assert eager_losses == pytest.approx(graph_losses, rel=1e-3)
    assert torch.allclose(eager_sums, graph_sums, rtol=1e-2, atol=1e-6)
    assert torch.allclose(eager_params, graph_params, rtol=1e-3, atol=1e-4)


def test_fit_trains_with_cuda_graphs_and_lands_on_the_target():
    model = quantized_resnet20()
    allocator = dambq.BitAllocator(model, 3.0, 3.0, window=(0, 1))
    history = fit(model, make_synthetic(1024, 256), StageConfig(epochs=2, lr=0.05, batch_size=128), device="cuda",
                  allocator=allocator, progress=False, compile=True, compile_mode="cuda-graphs")
    assert history[-1]["compile_mode"] == "cuda-graphs"
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert dambq.average_bits(model) == pytest.approx((3.0, 3.0), abs=1e-3)


@pytest.mark.parametrize("compile,mode", [(False, None), (True, "cuda-graphs"), (True, None)])
def test_training_step_never_synchronises_with_the_host(compile, mode):
    model = quantized_resnet20()
    allocator = dambq.BitAllocator(model, 2.0, 2.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step_fn = step_function(model, compile, mode)
    x = torch.randn(64, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=CUDA)
    train_step(step_fn, x, y, optimizer, allocator, amp=True)  # warm-up: compilation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            train_step(step_fn, x, y, optimizer, allocator, amp=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("compile", [None, True])
def test_fit_on_cuda_trains_in_bf16_eager_by_default_and_compiled_on_request(compile):
    # eager by default: default-mode compilation made epochs slower on an H200 (results/gpu-lease-1.md)
    history = fit(quantized_resnet20(), make_synthetic(512, 256), StageConfig(epochs=2, lr=0.05, batch_size=128),
                  device="cuda", allocator=None, progress=False, compile=compile)
    assert history[-1]["precision"] == "bf16 autocast" and history[-1]["compiled"] is bool(compile)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)


def test_compiled_sensitivity_sums_equal_eager_on_cuda():
    sums = []
    for compile in (False, True):
        model = quantized_resnet20()
        allocator = dambq.BitAllocator(model, 2.0, 2.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        step_fn = torch.compile(model) if compile else model
        torch.manual_seed(1)
        x = torch.randn(64, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (64,), device=CUDA)
        train_step(step_fn, x, y, optimizer, allocator, amp=False)
        sums.append(torch.cat([t for kind in allocator.kinds for t in kind.sums]))
    assert torch.allclose(sums[0], sums[1], rtol=1e-3, atol=1e-7)
