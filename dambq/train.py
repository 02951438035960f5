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
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .convert import average_bits, is_quantized
from .batches import batches, steps_per_epoch
from .data import Cifar10
from .graphs import MODE as GRAPHS_MODE, GraphedForward
from .folders import FolderData
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


def _cpu_has(device: torch.device, check: str) -> bool:
    """Whether `device` is a CPU for which torch.cpu's feature check `check` says yes."""
    found = getattr(getattr(torch, "cpu", None), check, None)
    return device.type == "cpu" and found is not None and bool(found())


def has_amx(device: torch.device) -> bool:
    """Whether `device` is a CPU with AMX tiles (Intel Xeon since Sapphire Rapids)."""
    return _cpu_has(device, "_is_amx_tile_supported")


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is a speed-up here: CUDA, or a CPU with AMX or AVX512-BF16.

    Why check the CPU: with bf16 units a ResNet20 training step runs faster in bf16 autocast,
    float and W4A4 alike; on a CPU without them (AVX2 only) bf16 is emulated and a step is
    more than ten times slower (results/step-speed.md, `python benchmarks/step_speed.py --all`,
    names the CPU each number comes from)."""
    if device.type == "cuda":
        return True
    return has_amx(device) or _cpu_has(device, "_is_avx512_bf16_supported")


def default_amp(device: torch.device) -> bool:
    """bf16 autocast by default wherever `fast_bfloat16` says it pays, for float and quantized
    models alike: the quantizers compute levels and rounding in fp32 inside their autograd
    functions and hand the result on in bf16, which the convolution would cast to anyway."""
    return fast_bfloat16(device)


def precision_label(amp: bool) -> str:
    """How results name a training precision: "bf16 autocast" or "fp32" (fit's per-epoch records,
    the report tables, and tests that expect the device's default, `precision_label(default_amp(device))`)."""
    return "bf16 autocast" if amp else "fp32"


# Steps after which compiling pays on a CPU without bf16 units: the slowest cold compilation
# measured (85 s, quantized) over a quantized step's smallest saving (43 ms); a float step saves
# some 30 ms over a compilation of under 50 s. AMD EPYC with AVX2 (results/step-speed.md, `python
# benchmarks/step_speed.py --all --precision fp32`).
COMPILE_PAYBACK_STEPS = 2000


def default_compile(device: torch.device, quantized: bool = True, steps: int | None = None) -> bool:
    """torch.compile by default only where a measurement showed it pays: quantized models on
    CPUs with fast bf16, float models too on CPUs with AMX, and any model on other CPUs in stages
    of at least `COMPILE_PAYBACK_STEPS` training steps.

    Why so narrow: on an AMD EPYC with AVX512-BF16 (2 cores) compiling made the bf16 W4A4 +
    tracking step 24 % faster but the float step 8 % slower (results/step-speed-avx512bf16.md,
    `python benchmarks/step_speed.py --all`); on an Intel Xeon with AMX it made both faster, float
    by 15 % (results/step-speed-amx.md; the 30-epoch float stage pays its ~30 s of compilation back
    several times over); on an AVX2-only EPYC the compiled fp32 steps are faster than eager, the
    quantized one by about a fifth, the float one by up to a tenth (results/step-speed.md; one
    earlier run saw no float gain), but compiling takes up to 85 s (cold cache), which pays back
    only in a long stage, hence `steps`, the training steps still to run (None: unknown, eager); on an
    H200 default-mode compilation made float and W4A4 epochs slower (results/gpu-lease-1.md), so
    CUDA stays eager until a lease times CUDA graphs faster (`--compile on --compile-mode
    reduce-overhead` asks for them; the GPU lease picks its mode from its own step profile).

    Example:
        >>> cpu = torch.device("cpu")
        >>> default_compile(torch.device("cuda")), default_compile(cpu, quantized=False, steps=10) == has_amx(cpu)
        (False, True)
    """
    if device.type != "cpu":
        return False
    if fast_bfloat16(device):
        return quantized or has_amx(device)
    return steps is not None and steps >= COMPILE_PAYBACK_STEPS


def engine_settings(device: torch.device, amp: bool | None = None, compile: bool | None = None,
                    channels_last: bool | None = None, quantized: bool = True, steps: int | None = None) -> dict:
    """The device and precision policy in one place: each None becomes this device's default
    for a quantized (or, with quantized=False, a float) model trained for `steps` steps (None: unknown).

    channels_last is on by default: on 2 CPU cores it speeds up the float and the W4A4
    step (results/step-speed.md vs results/step-speed-contiguous.md), and it is the layout
    tensor cores want."""
    return {"amp": default_amp(device) if amp is None else amp,
            "compile": default_compile(device, quantized, steps) if compile is None else compile,
            "channels_last": True if channels_last is None else channels_last}


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised
    (`python -m torch.distributed.run`, see `dambq.pipeline.main`)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over every rank (one all_reduce), as float64 on its device."""
    if world()[1] == 1:
        return list(values)
    packed = torch.stack([v.double() for v in values])
    dist.all_reduce(packed)
    return list(packed)


def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed torch (CPU and CUDA) and return a generator on `device` for data order and
    augmentation (on the device, so no random numbers cross from the host every batch)."""
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


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
def evaluate(model: nn.Module, images, labels: torch.Tensor | None = None, device: torch.device | None = None,
             batch_size: int | None = None, memory_format=torch.contiguous_format) -> dict[str, float]:
    """Mean cross-entropy and top-1 (%) in eval mode, always in float32, eager.

    `images` are test images (with `labels`), or a whole data set (`Cifar10` or streamed
    `FolderData`): its test split. Batch size does not change the result. Default: 250 on a
    CPU (of 250, 500 and 1000 the fastest on 2 cores; a one-off measurement), 2000 on a GPU,
    where an epoch of the paper profile is well under a second and 40 small evaluation
    batches would cost a third of it; 256 for streamed data."""
    device = device if device is not None else next(model.parameters()).device
    if batch_size is None:
        batch_size = 2000 if device.type == "cuda" else 250
    rank, world_size = world()  # under torchrun each rank evaluates every world-th image, then the sums meet
    if isinstance(images, FolderData):
        stream = images.test_batches(min(batch_size, 256), device, memory_format, rank=rank, world=world_size)
    else:
        if isinstance(images, Cifar10):
            images, labels = images.test_images, images.test_labels
        stream = batches(images[rank::world_size], labels[rank::world_size], batch_size, shuffle=False,
                         augment=False, device=device, memory_format=memory_format)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = torch.zeros((), device=device, dtype=torch.long)
    for x, y in stream:
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    loss_sum, correct, count = _sum_over_ranks(loss_sum, correct, count)
    return {"loss": float(loss_sum) / float(count), "top1": 100.0 * float(correct) / float(count)}


def data_sizes(data) -> tuple[int, int]:
    """(training, test) examples of a resident `Cifar10` or a streamed `FolderData`."""
    if isinstance(data, FolderData):
        return data.num_train, data.num_test
    return len(data.train_labels), len(data.test_labels)


def num_classes(data) -> int:
    """Classes of a data set: 10 for CIFAR-10, the folder count of an image folder."""
    return len(data.classes) if isinstance(data, FolderData) else 10


class Distillation(nn.Module):
    """A loss hook for `fit`: (1 - weight) * cross-entropy + weight * KL(teacher || student).

    Temperature 1: the teacher is the student's own float parent, already close; its full
    distribution is the target, not a softened one. An extension, off by default: in W4A4 one run
    each helped and hurt (results/quick-cpu-zeropad-amx.md, results/quick-cpu-clip3.md); in LBA (stage
    lba_kd) it helped both seeds (results/lba-kd-from-w4a4-lr0.005.md). A module, so
    that `fit` moves the teacher to the training device with the model.

    Example:
        >>> teacher = nn.Linear(4, 3)
        >>> x = torch.randn(5, 4)
        >>> float(Distillation(teacher, weight=1.0)(teacher(x).detach(), x, torch.zeros(5, dtype=torch.long)).abs()) < 1e-6
        True
    """

    def __init__(self, teacher: nn.Module, weight: float = 0.5):
        super().__init__()
        self.teacher, self.weight = teacher.eval().requires_grad_(False), weight

    def train(self, mode: bool = True):  # the teacher stays in evaluation mode
        return self

    def forward(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x).float(), dim=1)
        kl = F.kl_div(F.log_softmax(logits.float(), dim=1), target, log_target=True, reduction="batchmean")
        return (1 - self.weight) * F.cross_entropy(logits.float(), y) + self.weight * kl


def step_function(model: nn.Module, compile: bool, mode: str | None = None):
    """What a training step calls: the model itself, torch.compile(model, mode=mode), or, for
    mode "cuda-graphs", the eager model's forward and backward replayed as CUDA graphs
    (`dambq.graphs.GraphedForward`: the eager quantized step is bound by launching ~2,200
    operators on a GPU, results/gpu-lease-1.md). fit and the step benchmarks build it here.

    Raises:
        ValueError: mode "cuda-graphs" for a model that is not on a CUDA device."""
    if not compile:
        return model
    if mode == GRAPHS_MODE:
        return GraphedForward(model)
    return torch.compile(model, mode=mode)


def train_step(step_fn, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, allocator=None,
               amp: bool = False, loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step as `fit` takes it (benchmarks/step_speed.py times this same function).

    Args:
        step_fn: the model, or its torch.compile'd wrapper.
        allocator: a BitAllocator whose sums this step's sensitivities are added to.
        amp: bf16 autocast around the forward pass and the loss.
        loss_fn: (logits, x, y) -> loss; None is cross-entropy (`Distillation` is the other).

    Returns:
        (loss, logits), still on the device: reading them is the caller's choice of sync."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = step_fn(x)
        loss = F.cross_entropy(logits.float(), y) if loss_fn is None else loss_fn(logits, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if allocator is not None:
        allocator.accumulate()
    optimizer.step()
    return loss, logits


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
    try:
        generator.set_state(state["rng"]["data"].cpu())
    except RuntimeError:  # saved on another kind of device (a CPU state is not a CUDA one)
        warnings.warn("the checkpoint's data-order generator was saved on another device type; "
                      "reseeding it from the epoch, so the batch order differs from an uninterrupted run")
        generator.manual_seed(int(state["epoch"]) + 1 + int(generator.initial_seed()))
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])


def fit(model: nn.Module, data: Cifar10, cfg: StageConfig, *, device: str | torch.device = "auto",
        allocator=None, checkpoint: str | Path | None = None, resume: bool = True,
        metrics_csv: str | Path | None = None, seed: int = 0, stage: str = "train",
        meta: dict | None = None, amp: bool | None = None, channels_last: bool | None = None,
        compile: bool | None = None, compile_mode: str | None = None, deadline: float | None = None,
        progress: bool = True, on_epoch_end=None, loss_fn=None) -> list[dict]:
    """Train `model` on `data` for `cfg.epochs`, evaluating after every `cfg.eval_every`-th epoch and the last.

    Args:
        allocator: a dambq.BitAllocator, fed every step and stepped every epoch.
        checkpoint, resume: continue from an existing checkpoint (see the module doc).
        amp, compile, channels_last: None takes this device's default (`engine_settings`):
            bf16 autocast and torch.compile where a benchmark showed they pay. Evaluation
            is always eager float32, so it is batch-independent.
        compile_mode: passed to torch.compile (e.g. "reduce-overhead" for inductor's CUDA graphs),
            or "cuda-graphs": no torch.compile, the eager forward and backward captured as CUDA
            graphs (`dambq.graphs`; CUDA only, one process).
        deadline: a `time.time()` value; no epoch is started that the previous epoch's
            duration says would end after it (the checkpoint keeps what was done, so a
            later call resumes). Used to fit the paper profile into a GPU lease.
        loss_fn: (logits, x, y) -> loss instead of cross-entropy, e.g. `Distillation(teacher)`
            (an nn.Module loss is moved to the device with the model).
        meta: saved in the checkpoint (e.g. architecture and conversion arguments).

    Under torch.distributed (torchrun) every rank draws the same global batch of
    `cfg.batch_size` and trains on its 1/world share inside DistributedDataParallel; loss
    and accuracy are summed over ranks, rank 0 alone writes the checkpoint, the CSV and
    calls `on_epoch_end`, and every rank ends each epoch with rank 0's buffers (BatchNorm
    statistics, quantizer EMAs) and the same bits (`BitAllocator` sums over ranks).

    Returns:
        One record per epoch: losses, top-1, lr, `precision`, `compiled`, average bits for
        quantized models, `train_seconds` (training steps only) and `seconds` (with evaluation).
        An epoch not evaluated has test loss and top-1 None; a stage stopped by `deadline`
        evaluates its last epoch, so its last record always has them.
    """
    device = resolve_device(device)
    rank, world_size = world()
    if cfg.batch_size % world_size:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {world_size} processes: the profile's "
                         "batch size is the global batch, so it must be a multiple of the world size")
    quantized = is_quantized(model)
    steps = steps_per_epoch(data_sizes(data)[0], cfg.batch_size, drop_last=True)
    state = None
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=device)
    start_epoch = state["epoch"] + 1 if state is not None else 0
    # compilation pays back over the steps still to run: a resumed stage with one epoch left stays eager
    settings = engine_settings(device, amp, compile, channels_last, quantized,
                               steps=(cfg.epochs - start_epoch) * steps)
    amp = settings["amp"]
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    generator = seed_everything(seed, device)
    streamed = isinstance(data, FolderData)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    history = []
    if state is not None:
        _restore(state, model, optimizer, scheduler, allocator, generator)
        history = state["metrics"]
    step_model = model
    if world_size > 1:  # gradients all-reduced by DDP; buffers (BatchNorm, quantizer EMAs) follow rank 0
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if settings["compile"] and compile_mode == GRAPHS_MODE and world_size > 1:
        raise ValueError("compile_mode='cuda-graphs' runs one process; under torchrun use torch.compile or eager")
    step_fn = step_function(step_model, settings["compile"], compile_mode)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device=device, memory_format=memory_format)
    if not streamed:  # resident: the uint8 set moves to the device once
        train_x, train_y = data.train_images.to(device), data.train_labels.to(device)
    epochs = range(start_epoch, cfg.epochs)

    def save(epoch: int) -> None:  # checkpoint and CSV after an epoch; one writer, every rank holds the same state
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "allocator": allocator.state_dict() if allocator is not None else None,
                "rng": {"data": generator.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                "epoch": epoch, "metrics": history, "config": asdict(cfg), "meta": meta or {}})
        if metrics_csv is not None and rank == 0:
            write_metrics_csv(metrics_csv, history)
    progress = progress and rank == 0
    bar = tqdm(epochs, desc=stage, disable=not progress or tqdm is None) if tqdm else epochs
    for epoch in bar:
        # the longest of the last eval_every epochs: one of them included an evaluation, as the next may
        late = bool(deadline is not None and history and
                    time.time() + max(r["seconds"] for r in history[-cfg.eval_every:]) > deadline)
        if _sum_over_ranks(torch.tensor(float(late), device=device))[0] > 0:  # every rank stops together
            if history[-1]["test_top1"] is None:  # a stopped stage still reports its model's top-1
                _add_test(history[-1], evaluate(model, data, device=device, memory_format=memory_format))
                save(history[-1]["epoch"] - 1)
            break  # the next epoch would overrun: stop here, the checkpoint resumes later
        model.train()
        started, loss_sum, correct, seen = time.perf_counter(), torch.zeros((), device=device), \
            torch.zeros((), device=device, dtype=torch.long), 0
        if streamed:  # DataLoader workers, this process's share (DistributedSampler)
            epoch_batches = data.train_batches(cfg.batch_size, epoch, seed, rank, world_size, device, memory_format)
        else:
            epoch_batches = batches(train_x, train_y, cfg.batch_size, shuffle=True, augment=True, device=device,
                                    generator=generator, drop_last=True, memory_format=memory_format)
        if tqdm and progress:
            epoch_batches = tqdm(epoch_batches, total=steps, desc=f"{stage} epoch {epoch + 1}", leave=False,
                                 mininterval=5)
        for x, y in epoch_batches:  # no host synchronisation in here: every sum stays on the device
            if world_size > 1 and not streamed:  # every rank draws the same global batch, trains on its share
                x, y = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
            loss, logits = train_step(step_fn, x, y, optimizer, allocator, amp, loss_fn)
            scheduler.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
        loss_sum, correct, seen = _sum_over_ranks(loss_sum, correct, torch.tensor(float(seen), device=device))
        if world_size > 1:  # the last step's buffer updates came from each rank's own share
            for buffer in model.buffers():
                if buffer.dtype == torch.bool:  # gloo has no bool broadcast
                    flags = buffer.to(torch.uint8)
                    dist.broadcast(flags, 0)
                    buffer.copy_(flags.bool())
                else:
                    dist.broadcast(buffer, 0)
        record = {"stage": stage, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                  "precision": precision_label(amp), "compiled": settings["compile"],
                  **({"compile_mode": compile_mode} if settings["compile"] and compile_mode else {}),
                  "world_size": world_size,
                  "train_loss": float(loss_sum) / float(seen), "train_top1": 100.0 * float(correct) / float(seen)}
        if allocator is not None:
            allocator.end_epoch(epoch)
        train_seconds = time.perf_counter() - started
        record.update(test_loss=None, test_top1=None, train_seconds=train_seconds,
                      images_per_s=float(seen) / train_seconds)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            _add_test(record, evaluate(model, data, device=device, memory_format=memory_format))
        record["seconds"] = time.perf_counter() - started
        if quantized:
            record["weight_avg"], record["act_avg"] = average_bits(model)
        history.append(record)
        save(epoch)
        if tqdm and progress and record["test_top1"] is not None:
            bar.set_postfix(test_top1=f"{record['test_top1']:.2f}", loss=f"{record['train_loss']:.3f}")
        if on_epoch_end is not None and rank == 0:
            on_epoch_end(record)
        if world_size > 1:
            dist.barrier()  # the checkpoint is on disk before any rank goes on
    return history


def _add_test(record: dict, test: dict) -> None:
    record["test_loss"], record["test_top1"] = test["loss"], test["top1"]


def write_metrics_csv(path: str | Path, history: list[dict]) -> None:
    """All epochs so far as one CSV (rewritten whole, so a resumed run stays one file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
