"""Training engine: one loop for every stage, atomic resumable checkpoints, metrics.

    metrics = fit(model, data, StageConfig(epochs=10, lr=0.1), device="cuda",
                  allocator=alloc, checkpoint="runs/lba.pt", metrics_csv="runs/lba.csv")

A checkpoint holds model, optimizer, scheduler, allocator and RNG state and is
written atomically after every epoch; calling `fit` again with the same
checkpoint continues a killed run where it stopped (and returns at once for a
finished one). An unreadable checkpoint is an error that leaves the file alone.
"""
from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .convert import average_bits, is_quantized
from .data import Cifar10, batches, steps_per_epoch
from .profiles import StageConfig

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a listed dependency
    tqdm = None


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; it is left untouched."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is a speed-up here: CUDA, or a CPU with AMX or AVX512-BF16.

    Why check the CPU: on the 2-core Xeon (AMX) used for the quick profile a float
    ResNet20 training step runs about 1.7x faster in bf16 autocast (results/step-speed.md,
    `python benchmarks/step_speed.py`); on a CPU without bf16 units it would be emulated
    and slower."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def default_amp(model: nn.Module, device: torch.device) -> bool:
    """bf16 autocast for `model` on `device`: float models where `fast_bfloat16`; quantized
    models never, so that their levels stay exact."""
    return fast_bfloat16(device) and not is_quantized(model)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (CPU and CUDA) and return a generator for data order/augmentation."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: StageConfig) -> torch.optim.SGD:
    """SGD with weight decay on conv/linear weights only.

    Why not on BN, biases and activation clips: decaying a clip shrinks the
    activation range for no reason the loss knows about."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": other, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: StageConfig, steps: int):
    """Per-step multiplier: linear warm-up, then cosine to 0 or x0.1 at milestones."""
    total, warmup = cfg.epochs * steps, int(cfg.warmup_epochs * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "step":
            return 0.1 ** sum(step >= m * steps for m in cfg.milestones)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        raise ValueError(f"unknown schedule {cfg.schedule!r}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 250, memory_format=torch.contiguous_format) -> dict[str, float]:
    """Mean cross-entropy and top-1 (%) in eval mode, always in float32.

    Batch size does not change the result; 250 because of 250, 500 and 1000 it was the
    fastest on 2 CPU cores (ResNet20, channels_last; a one-off measurement, not a benchmark)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in batches(images, labels, batch_size, shuffle=False, augment=False, device=device,
                        memory_format=memory_format):
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    count = labels.numel()
    return {"loss": float(loss_sum) / count, "top1": 100.0 * float(correct) / count}


def distill_loss(logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """KL(teacher || student) of the softmax outputs, batch mean (temperature 1).

    Why temperature 1: the teacher is the student's own float parent, already close;
    its full distribution is the target, not a softened one."""
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        target = F.log_softmax(teacher(x).float(), dim=1)
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target, log_target=True, reduction="batchmean")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temporary file beside `path`, then rename: a kill mid-write
    leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by `fit`; a missing or unreadable one is a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                              "it was left untouched - delete it, or start without resuming") from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} does not hold a dambq training state; left untouched")
    return state


def _restore(state: dict, model, optimizer, scheduler, allocator, generator) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if allocator is not None and state.get("allocator") is not None:
        allocator.load_state_dict(state["allocator"])
    generator.set_state(state["rng"]["data"].cpu())
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])


def fit(model: nn.Module, data: Cifar10, cfg: StageConfig, *, device: str | torch.device = "auto",
        allocator=None, checkpoint: str | Path | None = None, resume: bool = True,
        metrics_csv: str | Path | None = None, seed: int = 0, stage: str = "train",
        meta: dict | None = None, amp: bool | None = None, channels_last: bool | None = None,
        compile: bool = False, progress: bool = True, on_epoch_end=None,
        teacher: nn.Module | None = None, distill_weight: float = 0.5) -> list[dict]:
    """Train `model` on `data` for `cfg.epochs`, evaluating after every epoch.

    allocator: a dambq.BitAllocator, fed every step and stepped every epoch.
    checkpoint/resume: continue from an existing checkpoint (see module doc).
    amp: bfloat16 autocast, default on for float models where `fast_bfloat16` says
    it pays (quantized layers keep float32 so the levels stay exact; evaluation is
    always float32). channels_last: default on (on 2 CPU cores it speeds up the float
    and the W4A4 step: results/step-speed.md vs results/step-speed-contiguous.md).
    teacher: a trained model (usually the float one) whose soft predictions on the
    same augmented batch the student also matches: loss = (1 - w) * CE + w * KL,
    w = `distill_weight`. An extension, not in the paper, tried on the idea that a
    quantized net fine-tuned for a few epochs loses less when it copies its float
    parent; in the quick profile it gained 0.22 over plain W4A4 with calibrated clips
    (results/quick-cpu.md) and lost 0.47 with clips at 3.0 (results/quick-cpu-clip3.md):
    one run each, so it stays off by default.
    meta: saved in the checkpoint (e.g. architecture and conversion arguments).
    Returns one metrics dict per epoch (loss, top-1, average bits, seconds)."""
    device = resolve_device(device)
    quantized = is_quantized(model)
    amp = default_amp(model, device) if amp is None else amp
    channels_last = True if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    generator = seed_everything(seed)
    steps = steps_per_epoch(len(data.train_labels), cfg.batch_size, drop_last=True)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    history, start_epoch = [], 0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=device)
        _restore(state, model, optimizer, scheduler, allocator, generator)
        history, start_epoch = state["metrics"], state["epoch"] + 1
    step_fn = torch.compile(model) if compile else model
    if teacher is not None:
        teacher.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
        teacher_amp = default_amp(teacher, device)
    train_x, train_y = data.train_images.to(device), data.train_labels.to(device)
    epochs = range(start_epoch, cfg.epochs)
    bar = tqdm(epochs, desc=stage, disable=not progress or tqdm is None) if tqdm else epochs
    for epoch in bar:
        model.train()
        started, loss_sum, correct, seen = time.perf_counter(), torch.zeros((), device=device), \
            torch.zeros((), device=device, dtype=torch.long), 0
        epoch_batches = batches(train_x, train_y, cfg.batch_size, shuffle=True, augment=True, device=device,
                                generator=generator, drop_last=True, memory_format=memory_format)
        if tqdm and progress:
            epoch_batches = tqdm(epoch_batches, total=steps, desc=f"{stage} epoch {epoch}", leave=False,
                                 mininterval=5)
        for x, y in epoch_batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = step_fn(x)
                loss = F.cross_entropy(logits.float(), y)
            if teacher is not None:
                loss = (1 - distill_weight) * loss + distill_weight * distill_loss(logits, teacher, x, teacher_amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if allocator is not None:
                allocator.accumulate()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
        record = {"stage": stage, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                  "precision": "bf16 autocast" if amp else "fp32",
                  "train_loss": float(loss_sum) / seen, "train_top1": 100.0 * float(correct) / seen}
        if allocator is not None:
            allocator.end_epoch(epoch)
        train_seconds = time.perf_counter() - started
        test = evaluate(model, data.test_images, data.test_labels, device, memory_format=memory_format)
        record.update(test_loss=test["loss"], test_top1=test["top1"], train_seconds=train_seconds,
                      images_per_s=seen / train_seconds, seconds=time.perf_counter() - started)
        if quantized:
            record["weight_avg"], record["act_avg"] = average_bits(model)
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "allocator": allocator.state_dict() if allocator is not None else None,
                "rng": {"data": generator.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                "epoch": epoch, "metrics": history, "config": asdict(cfg), "meta": meta or {}})
        if metrics_csv is not None:
            write_metrics_csv(metrics_csv, history)
        if tqdm and progress:
            bar.set_postfix(test_top1=f"{test['top1']:.2f}", loss=f"{record['train_loss']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(record)
    return history


def write_metrics_csv(path: str | Path, history: list[dict]) -> None:
    """All epochs so far as one CSV (rewritten whole, so a resumed run stays one file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
