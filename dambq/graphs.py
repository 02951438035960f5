"""CUDA graphs of an eager model's training forward and backward (`compile_mode="cuda-graphs"`).

Why: on an H200 a W4A4 + tracking ResNet20 epoch at batch 512 took 5.2-5.6 s eager against
1.0 s for float, and default-mode torch.compile made it slower (results/gpu-lease-1.md). The
arithmetic is a few percent more than float's; the calls are not: a quantized training step
makes about 2,200 operator calls against about 450 for float (`python benchmarks/step_profile.py
--device cpu --batch 32 --modes eager`), and on a GPU each is a launch paid from Python. Replayed
as CUDA graphs (`torch.cuda.make_graphed_callables`), the forward and the backward are one
launch each, whatever the quantizers do inside; the loss, the allocator's sums and the
optimizer stay eager (a few fused launches).

Why it is safe for dambq's layers: every state a training step reads or writes lives in
parameters and buffers that change in place (bits by `BitAllocator` via `copy_`, the weight
statistics by `lerp_`, sensitivity sums by foreach ops, BatchNorm statistics), so a replay sees
their current values, bits lowered between epochs included. What a graph cannot see is Python
state and a tensor replaced by another; both are in the capture's key (`capture_key`: input
shape, autocast, every parameter's and buffer's storage, each quantizer's tracking and sign
mode), and a change captures again. Capturing runs a few warm-up passes on the first batch;
the buffers they move (BatchNorm statistics, weight EMAs, sensitivity sums) are put back, so
a graphed run trains on exactly the batches an eager one does.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

MODE = "cuda-graphs"
"""The `compile_mode` (fit, `--compile-mode`) that selects this instead of torch.compile."""


class _Forward(nn.Module):
    """A module around the model, so that graphing patches this wrapper's forward, never the
    model's own (the model is evaluated, converted and saved as usual)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def capture_key(model: nn.Module, x: Tensor) -> tuple:
    """Everything a captured graph depends on that a replay would not pick up by itself."""
    device = x.device.type
    tensors = tuple((t.data_ptr(), t.dtype, tuple(t.shape))
                    for t in (*model.parameters(), *model.buffers()))
    modes = tuple((getattr(m, "track", None), getattr(m, "sign_mode", None)) for m in model.modules())
    return (tuple(x.shape), x.stride(), x.dtype, torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device), model.training, tensors, modes)


class GraphedForward:
    """Call like the model: the training forward (and, through autograd, its backward) replayed
    as CUDA graphs; evaluation and no-grad calls run the model eagerly.

    Args:
        model: an eager model on a CUDA device (not DDP-wrapped, not compiled).
        warmup: passes on the first batch before capture (torch's default, 3).
        capture: the graphing function (torch.cuda.make_graphed_callables; tests pass a stand-in).

    Raises:
        ValueError: the model is not on a CUDA device.

    Example (on a GPU; `fit(..., compile=True, compile_mode="cuda-graphs")` does this):
        step_fn = GraphedForward(model)
        loss = F.cross_entropy(step_fn(x), y); loss.backward()   # two graph replays
    """

    def __init__(self, model: nn.Module, warmup: int = 3, capture: Callable | None = None):
        if capture is None:
            first = next(model.parameters(), None)
            if first is None or first.device.type != "cuda":
                raise ValueError("compile_mode='cuda-graphs' needs the model on a CUDA device; on a CPU train "
                                 "eagerly or with torch.compile (fit's default picks per device)")
            capture = torch.cuda.make_graphed_callables
        self.model, self.warmup, self.capture = model, warmup, capture
        self.captures = 0  # how many times a graph was captured (a test reads it)
        self._key = self._graphed = None

    def __call__(self, x: Tensor) -> Tensor:
        if not (self.model.training and torch.is_grad_enabled()):
            return self.model(x)
        device = x.device.type
        # the graphs are captured under the caller's autocast, which must not cache casts
        with torch.autocast(device, dtype=torch.get_autocast_dtype(device),
                            enabled=torch.is_autocast_enabled(device), cache_enabled=False):
            key = capture_key(self.model, x)
            if key != self._key:
                self._capture(x, key)
            return self._graphed(x)

    def _capture(self, x: Tensor, key: tuple) -> None:
        """Graph the model on a copy of `x`, then undo what the warm-up passes changed."""
        saved = [(b, b.clone()) for b in self.model.buffers()]
        # allow_unused_input: a parameter the forward does not use gets no gradient, as in eager
        self._graphed = self.capture(_Forward(self.model), (x.detach().clone(),), num_warmup_iters=self.warmup,
                                     allow_unused_input=True)
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        self._key, self.captures = key, self.captures + 1
