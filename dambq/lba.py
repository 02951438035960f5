"""Loss-guided bit-width allocation (LBA) and the per-layer bit report.

During training, every quantized weight group and activation channel adds the
first-order Taylor estimate of the loss change its quantization causes to an
accumulator (see quantizers.py; the backward pass does the work on the device).
At the end of each epoch inside the allocation window the allocator lowers by
one bit the groups with the smallest estimates, one global ranking over all
layers, until the size-weighted average meets the target:

    alloc = BitAllocator(model, weight_target=2.0, act_target=2.0, window=(0, 150))
    loss.backward(); alloc.accumulate(); optimizer.step()   # every step
    alloc.end_epoch(epoch)                                    # lowers bits, resets sums

Unlike V2 it lands on the target (never above it, and below it by less than one
decrement of the smallest group that could still be lowered), never spends a
decrement on a group already at its floor, meets the target by the end of the
window whatever its length, and saves its state for resumed runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .convert import act_channel_sizes, has_quantized_input, has_quantized_weight, quant_layers, weight_group_sizes
from .codebook import MAX_BITS
from .quantizers import FLOAT_BITS, MAX_ACT_BITS

RANK_BY = ("per_bit", "sensitivity")
ERRORS = ("current", "next")
SIGNALS = ("lba", "fisher", "random", "uniform")


@dataclass
class _Kind:
    """The quantizers of one kind (weights or activations) seen as one flat list."""

    name: str
    quantizers: list[nn.Module]
    sizes: list[callable]      # per quantizer: () -> size of each group in bits saved per decrement
    target: float | None
    floor: int                 # bits a group may not go below

    @property
    def sums(self) -> list[Tensor]:
        return [q.sensitivity_sum for q in self.quantizers]

    def flat(self) -> tuple[Tensor, Tensor, Tensor]:
        """(bits, sizes, sums) concatenated over layers."""
        bits = torch.cat([q.bits for q in self.quantizers])
        sizes = torch.cat([size() for size in self.sizes]).to(bits.device)
        return bits, sizes, torch.cat(self.sums)

    def average(self) -> float:
        if not self.quantizers:  # weight-only (no quantized input) or activation-only
            return float(FLOAT_BITS)
        bits, sizes, _ = self.flat()
        return float((bits * sizes).sum() / sizes.sum())


class BitAllocator:
    """Lowers per-group bit-widths by loss sensitivity until the averages meet a target.

    Args:
        model: a converted model (its quantizers are switched to tracking here).
        weight_target, act_target: size-weighted averages to reach; None leaves that kind alone.
        window: (first, last) 0-based epoch in which bits may be lowered; the target is met by
            the end of `last`.
        max_ratio: the share of eligible groups lowered per epoch rises linearly from
            `min_ratio` to this across the window (the spec's ramp); a pair (weights,
            activations) gives each kind its own, as the original code's 0.4 / 0.2. When the
            ramp would not reach the target in time, the remaining gap is spread evenly over
            the remaining epochs.
        min_act_bits, min_weight_bits: floors (weights may reach 0 bits: the channel is pruned).
        min_ratio: the ramp's start.
        rank_by: "per_bit" ranks by estimated loss change per bit of storage saved;
            "sensitivity" by V2's S (for weights the two coincide, since V2's S_w is already
            divided by the group size; for activations V2 does not divide by the channel's H*W).
        error: "current" estimates the effect of the current quantization error (V2); "next"
            the effect of the next decrement itself.
        signal: "lba" (the paper's first-order estimate, as `error` says); "fisher" (second
            order, HAWQ-style: 0.5 * sum over the group of (dL/dQ * dQ)^2, the squared gradient
            standing in for the Hessian diagonal and dQ the next decrement's change); "random"
            (the control: seeded random scores through the same ranking; no tracking cost);
            "uniform" (no allocation: every group at the target's bits from the start, for whole
            targets, as the paper's "every channel at W2A2" comparison).
        seed: the random signal's seed.

    Raises:
        ValueError: no quantized layers, a target outside its kind's range, a target for a kind
            that is not quantized (e.g. act_target with act_bits=None), bad ramp or window.

    Example:
        >>> import dambq, torch
        >>> from torch import nn
        >>> q = dambq.convert(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)), 4, 4)
        >>> alloc = BitAllocator(q, weight_target=3.0, act_target=None, window=(0, 0))
        >>> q(torch.rand(16, 8)).sum().backward(); alloc.accumulate(); record = alloc.end_epoch(0)
        >>> dambq.average_bits(q)[0] <= 3.0
        True
    """

    def __init__(self, model: nn.Module, weight_target: float | None = 2.0,
                 act_target: float | None = 2.0, window: tuple[int, int] = (0, 150),
                 max_ratio: float | tuple[float, float] = 0.3, min_act_bits: int = 1, min_weight_bits: int = 0,
                 min_ratio: float = 0.01, rank_by: str = "per_bit", error: str = "current",
                 signal: str = "lba", seed: int = 0):
        named = list(quant_layers(model))
        self.layer_names = [name for name, _ in named]
        layers = [layer for _, layer in named]
        if not layers:
            raise ValueError("the model has no quantized layers to allocate: call dambq.convert first")
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        if error not in ERRORS:
            raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")
        self.signal, self.seed = signal, seed
        if not (0 <= window[0] <= window[1]):
            raise ValueError(f"window must be (first, last) with 0 <= first <= last, got {window}")
        ratios = tuple(max_ratio) if isinstance(max_ratio, (tuple, list)) else (max_ratio, max_ratio)
        if len(ratios) != 2 or not all(0 < min_ratio <= r <= 1 for r in ratios):
            raise ValueError(f"need 0 < min_ratio <= max_ratio <= 1 (max_ratio: one value or (weights, "
                             f"activations)), got {min_ratio}, {max_ratio}")
        _check_target("weight_target", weight_target, min_weight_bits, MAX_BITS)
        _check_target("act_target", act_target, min_act_bits, MAX_ACT_BITS)
        self.window, self.min_ratio, self.max_ratio = tuple(window), min_ratio, ratios  # (weights, activations)
        self.rank_by, self.error = rank_by, error
        self.kinds = [
            _Kind("weight", [l.weight_quant for l in layers if has_quantized_weight(l)],
                  [(lambda l=l: weight_group_sizes(l)) for l in layers if has_quantized_weight(l)],
                  weight_target, min_weight_bits),
            _Kind("act", [l.act_quant for l in layers if has_quantized_input(l)],
                  [(lambda l=l: act_channel_sizes(l)) for l in layers if has_quantized_input(l)],
                  act_target, min_act_bits),
        ]
        if weight_target is not None and not self.kinds[0].quantizers:
            raise ValueError("weight_target is set but every weight is float (converted with weight_bits=None?): "
                             "pass weight_target=None to allocate activations only")
        if act_target is not None and not self.kinds[1].quantizers:
            raise ValueError("act_target is set but no layer has a quantized input (converted with "
                             "act_bits=None?): pass act_target=None to allocate weights only")
        track = {"lba": error, "fisher": "fisher", "random": None, "uniform": None}[signal]
        for kind in self.kinds:
            for q in kind.quantizers:
                q.track = track
                q.step_sensitivity = torch.zeros(q.bits.numel(), device=q.bits.device)
                q.sensitivity_sum = torch.zeros(q.bits.numel(), device=q.bits.device)
        self.history: list[dict] = []
        if signal == "uniform":
            for kind in self.kinds:
                if kind.target is None:
                    continue
                if not float(kind.target).is_integer():
                    raise ValueError(f"signal='uniform' puts every group at the target's bits: {kind.name}_target "
                                     f"must be a whole number, got {kind.target}")
                for q in kind.quantizers:
                    q.bits.fill_(int(kind.target))

    # ------------------------------------------------------------------ every step
    @torch.no_grad()
    def accumulate(self) -> None:
        """Add |this step's sensitivity| to the epoch sums; on the device, no host sync.

        Why foreach: three fused launches instead of two small kernels per quantizer (76 for
        ResNet20), which on a GPU cost more in launch overhead than the arithmetic."""
        steps = [q.step_sensitivity for kind in self.kinds for q in kind.quantizers]
        totals = [total for kind in self.kinds for total in kind.sums]
        torch._foreach_add_(totals, torch._foreach_abs(steps))
        torch._foreach_zero_(steps)

    # ------------------------------------------------------------------ every epoch
    @torch.no_grad()
    def end_epoch(self, epoch: int) -> dict:
        """Lower bits if `epoch` lies in the window, then reset the sums.

        Returns (and appends to `history`) the epoch's record: averages after
        the step, how many decrements each kind received, and every layer's bits
        (small: a list of ints per layer) so that plots can show how they evolved."""
        record = {"epoch": epoch + 1}  # 1-based, as logs and tables count; `epoch` itself is the 0-based index
        for kind in self.kinds:
            if dist.is_available() and dist.is_initialized():
                for total in kind.sums:
                    dist.all_reduce(total)
            lowered = 0
            if self.signal == "random":  # the control: the same machinery ranking random scores
                generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
                for total in kind.sums:
                    total.copy_(torch.rand(total.shape, generator=generator, dtype=torch.float64))
            if kind.target is not None and self.window[0] <= epoch <= self.window[1]:
                lowered = self._lower(kind, epoch)
            record[f"{kind.name}_avg"] = kind.average()
            record[f"{kind.name}_lowered"] = lowered
            record[f"{kind.name}_bits"] = {name: q.bits.tolist()
                                          for name, q in zip(self.layer_names, kind.quantizers)}
            for total in kind.sums:
                total.zero_()
        self.history.append(record)
        if epoch >= self.window[1]:
            self._stop_tracking()
        return record

    def _stop_tracking(self) -> None:
        """No more sensitivities once the window's last epoch is over: nothing reads them.

        Why: tracking costs every step (`benchmarks/step_speed.py` times W4A4 with and without
        it: results/step-speed*.md) and the paper profile trains 149 of its 300 LBA epochs
        after the window. The buffers stay (zero), so `accumulate` and
        `state_dict` work unchanged; a compiled model recompiles once for the new state."""
        for kind in self.kinds:
            for q in kind.quantizers:
                q.track = None

    def _ramp(self, kind: _Kind, epoch: int) -> float:
        first, last = self.window
        progress = (epoch - first) / (last - first) if last > first else 1.0
        top = self.max_ratio[0] if kind.name == "weight" else self.max_ratio[1]
        return self.min_ratio + (top - self.min_ratio) * progress

    def _scores(self, kind: _Kind, sums: Tensor, sizes: Tensor) -> Tensor:
        per_group = kind.name == "weight" or self.rank_by == "per_bit"
        return sums / sizes if per_group else sums

    def _lower(self, kind: _Kind, epoch: int) -> int:
        """Spend this epoch's share of the gap on the least sensitive groups."""
        bits, sizes, sums = (t.double().cpu() for t in kind.flat())
        bits = bits.long()
        gap = float((bits * sizes).sum() - kind.target * sizes.sum())
        if gap <= 1e-9:
            return 0
        eligible = bits > kind.floor
        order = torch.argsort(self._scores(kind, sums, sizes), stable=True)
        ramp_count = int(round(self._ramp(kind, epoch) * int(eligible.sum())))
        ramp_budget = float(sizes[order][eligible[order]][:ramp_count].sum())
        remaining_epochs = self.window[1] - epoch + 1
        budget = min(gap, max(ramp_budget, gap / remaining_epochs))
        times = torch.zeros_like(bits)  # decrements each group got this epoch
        while budget > 1e-9:  # several passes when a group must lose more than one bit
            progressed = False
            for g in order.tolist():
                if budget <= 1e-9:
                    break
                if bits[g] > kind.floor and sizes[g] <= gap + 1e-9:
                    bits[g] -= 1; times[g] += 1
                    gap -= float(sizes[g]); budget -= float(sizes[g])
                    progressed = True
            if not progressed:
                break
        if gap > 1e-9 and budget > 1e-9:
            # every lowerable group is larger than the gap: lower the smallest one (the
            # least lowered, then least sensitive, among equals) so the average lands
            # just under the target
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel())
            candidates = [g for g in order.tolist() if bits[g] > kind.floor]
            if candidates:
                g = min(candidates, key=lambda i: (float(sizes[i]), int(times[i]), int(rank[i])))
                bits[g] -= 1; times[g] += 1
        lowered = int(times.sum())
        self._write_bits(kind, bits)
        return lowered

    @staticmethod
    def _write_bits(kind: _Kind, bits: Tensor) -> None:
        start = 0
        for q in kind.quantizers:
            n = q.bits.numel()
            q.bits.copy_(bits[start:start + n].to(q.bits.device))
            start += n

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Sums and history, to resume mid-allocation (the bits live in the model).

        The sums are buffers of the quantizers (not saved with the model), so they
        follow `model.to(device)`."""
        return {"weight_sums": [t.clone() for t in self.kinds[0].sums],
                "act_sums": [t.clone() for t in self.kinds[1].sums],
                "history": list(self.history),
                "config": {"window": self.window, "max_ratio": self.max_ratio,
                           "min_ratio": self.min_ratio, "rank_by": self.rank_by, "error": self.error,
                           "signal": self.signal, "seed": self.seed,
                           "weight_target": self.kinds[0].target, "act_target": self.kinds[1].target}}

    def load_state_dict(self, state: dict) -> None:
        """Restore sums and history saved by `state_dict`."""
        for kind, key in zip(self.kinds, ("weight_sums", "act_sums")):
            if len(state[key]) != len(kind.sums):
                raise ValueError(f"allocator state has {len(state[key])} {kind.name} layers, model has {len(kind.sums)}")
            for total, saved in zip(kind.sums, state[key]):
                total.copy_(saved)
        self.history = list(state["history"])
        if self.history and self.history[-1]["epoch"] - 1 >= self.window[1]:  # resumed after the window
            self._stop_tracking()

    def close(self) -> None:
        """Switch sensitivity tracking off and free its buffers."""
        for kind in self.kinds:
            for q in kind.quantizers:
                q.track, q.step_sensitivity, q.sensitivity_sum = None, None, None

    def averages(self) -> tuple[float, float]:
        """Current size-weighted (weight, activation) averages of the allocated layers."""
        return self.kinds[0].average(), self.kinds[1].average()


def _check_target(name: str, target: float | None, floor: int, ceiling: int) -> None:
    if target is None:
        return
    if not floor <= target <= ceiling:
        raise ValueError(f"{name}={target} cannot be met: bit-widths here lie in {floor}..{ceiling} "
                         f"(the floor is set by min_{name.split('_')[0]}_bits)")


def bit_report(model: nn.Module) -> pd.DataFrame:
    """One row per quantized layer: groups, mean/min/max bits, pruned groups, size in bits.

    Why: the averages hide where the bits went; this table shows which layers
    the allocation squeezed and which it spared. 8-bit layers are listed too,
    marked, but are outside the averages."""
    rows = []
    for name, layer in quant_layers(model, include_8bit=True):
        w_bits, a_bits = layer.weight_bits.float(), layer.act_bits.float()
        w_sizes, a_sizes = weight_group_sizes(layer).float(), act_channel_sizes(layer).float()
        rows.append({
            "layer": name, "type": type(layer).__name__, "fixed_8bit": layer.fixed_8bit,
            "weight_groups": w_bits.numel(), "weight_bits_mean": float((w_bits * w_sizes).sum() / w_sizes.sum()),
            "weight_bits_min": int(w_bits.min()), "weight_bits_max": int(w_bits.max()),
            "pruned_groups": int((w_bits == 0).sum()), "weight_size_bits": int((w_bits * w_sizes).sum()),
            "act_channels": a_bits.numel(), "act_sign": getattr(layer.act_quant, "sign_mode", "-"),
            "act_bits_mean": float(a_bits.mean()),
            "act_bits_min": int(a_bits.min()), "act_bits_max": int(a_bits.max()),
            "pruned_channels": int((a_bits == 0).sum()), "act_size_bits": int((a_bits * a_sizes).sum()),
        })
    if not rows:
        raise ValueError("the model has no quantized layers: call dambq.convert first")
    return pd.DataFrame(rows).set_index("layer")
