"""The paper's pipeline as named stages: float -> W4A4 -> W2.0A2.0 (LBA), plus baselines.

Each stage reads the checkpoint of the stage it starts from, trains with the
profile's schedule, and writes `<out>/<stage>.pt` and `<out>/<stage>.csv`;
rerunning a finished stage returns its result at once, a killed one resumes.
The notebooks and `python -m dambq.pipeline` both call `run_stage`.

    python -m dambq.pipeline --profile quick --stages float,w4a4,lba --out runs/quick

Why one module of ~520 lines: a stage's definition, the record of how it was made, its
read-back and its command line are one concept; the report is `dambq.report`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .calibrate import calibrate_act_clips
from .convert import act_clips, average_bits, convert
from .batches import normalize
from .data import Cifar10, load_cifar10
from .lba import BitAllocator, bit_report
from .quantizers import UniformAct
from .models import build_model
from .profiles import RECIPES, Profile, StageConfig, get_profile, target_label, with_schedule
from .folders import FolderData, load_image_folder
from .train import Distillation, data_sizes, evaluate, fit, load_checkpoint, num_classes, resolve_device, world


RECIPE = "recipe"    # a Stage's code-book: the profile's recipe's
PROFILE = "profile"  # a Stage's bits: the profile's starting bits


@dataclass(frozen=True)
class Stage:
    """How to build a stage's model from its parent's checkpoint."""

    parent: str | None                  # stage whose checkpoint it starts from
    schedule: str                       # which StageConfig of the profile it trains with
    codebook: str | None = None         # None: float model; RECIPE: the profile's recipe's
    weight_bits: int | str = PROFILE
    act_bits: int | str | None = PROFILE  # None: weight-only (inputs stay float, the paper's A32 rows)
    allocate: bool = False              # attach a BitAllocator with the profile's window and recipe
    teacher: str | None = None          # stage whose model it also distils from (an extension)
    description: str = ""


STAGES: dict[str, Stage] = {
    "float": Stage(None, "float", description="full-precision network"),
    "w4a4": Stage("float", "w4a4", codebook=RECIPE, description="W4A4, DMBQ weights (the recipe's code-book)"),
    "lba": Stage("w4a4", "lba", codebook=RECIPE, allocate=True,
                 description="channel-wise allocation from W4A4 to the targets (LBA)"),
    "w4a4_uniform": Stage("float", "w4a4", codebook="uniform",
                          description="W4A4 baseline: uniform weights, MSE-optimal clip"),
    "w4a4_laplace": Stage("float", "w4a4", codebook="laplace",
                          description="W4A4 with V2's fixed Laplace table"),
    "w4a4_kd": Stage("float", "w4a4", codebook=RECIPE, teacher="float",
                     description="W4A4 as w4a4, plus distillation from the float model (extension)"),
    "lba_kd": Stage("w4a4", "lba", codebook=RECIPE, allocate=True, teacher="float",
                    description="LBA as lba, plus distillation from the float model (extension)"),
    "w4a32": Stage("float", "w4a4", codebook=RECIPE, act_bits=None,
                   description="W4A32: DMBQ weights only, inputs stay float"),
    "lba_a32": Stage("w4a32", "lba", codebook=RECIPE, act_bits=None, allocate=True,
                     description="weight-only allocation from W4A32 to the weight target (LBA)"),
    "w2a2_fixed": Stage("w4a4", "lba", codebook=RECIPE, weight_bits=2, act_bits=2,
                        description="every channel at W2A2 from W4A4, same steps as LBA (no allocation)"),
}


def stage_quantization(stage: str, profile: Profile) -> dict | None:
    """The `dambq.convert` arguments of a stage's layers (None for a float stage): its own
    code-book and bits where it names them, else the profile's recipe and starting bits."""
    spec = STAGES[stage]
    if spec.codebook is None:
        return None
    recipe_codebook = profile.codebook or RECIPES[profile.recipe].codebook
    return {"codebook": recipe_codebook if spec.codebook == RECIPE else spec.codebook,
            "weight_bits": profile.weight_bits if spec.weight_bits == PROFILE else spec.weight_bits,
            "act_bits": profile.act_bits if spec.act_bits == PROFILE else spec.act_bits,
            "granularity": profile.granularity}


def stage_file(stage: str, weight_target: float | None = 2.0, act_target: float | None = 2.0,
               signal: str = "lba", seed: int = 0) -> str:
    """File stem of a stage's outputs in its runs folder.

    Allocating stages carry their targets (``lba-W1.5A2.0``) unless they are the paper's
    W2.0A2.0, their allocation signal unless it is LBA (``lba-fisher-W2.0A2.0``) and their
    seed unless it is 0 (``lba-W2.0A2.0-s1``), so runs of several targets, methods and seeds
    share one folder (and the W4A4 checkpoint they start from) without reading back each
    other's results.

    Example:
        >>> stage_file("lba", 2.0, 2.0), stage_file("lba", 1.0, 2.0, "random", 1)
        ('lba', 'lba-random-W1.0A2.0-s1')
    """
    if not STAGES[stage].allocate:
        return stage
    name = stage if signal == "lba" else f"{stage}-{signal}"
    if (weight_target, act_target) != (2.0, 2.0) or signal != "lba":
        name += f"-{target_label(weight_target, act_target)}"
    return name + (f"-s{seed}" if seed else "")


def device_name(device: torch.device) -> str:
    """Human-readable device for result tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name, family and model numbers, and the vector units that decide
    precision here, e.g. "AMD EPYC (family 26, model 2), AVX512-BF16" or "Intel Xeon ..., AMX".

    Why the numbers: virtual machines often report a bare "AMD EPYC", and two such machines
    were 1.7x apart in training speed (results/quick-cpu*.md); results on CPUs differ by these.

    Example:
        >>> cpu_model().count(",") >= 1
        True
    """
    name, numbers = platform.processor() or platform.machine(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("model name", "cpu family", "model") and key not in numbers:
                numbers[key] = value
            if not line.strip() and numbers:  # the first processor's block is enough
                break
    except OSError:
        pass
    name = numbers.get("model name", name)
    if "cpu family" in numbers and "model" in numbers:
        name += f" (family {numbers['cpu family']}, model {numbers['model']})"
    cpu = getattr(torch, "cpu", None)
    units = [unit for unit, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
             if getattr(cpu, check, None) is not None and getattr(cpu, check)()]
    capability = torch.backends.cpu.get_cpu_capability()
    return ", ".join([name, *units] or [name]) + ("" if units else f", {capability}")


def load_data(profile: Profile, root: str | Path | None = None) -> Cifar10 | FolderData:
    """The profile's data: its source and limits, from `root` or DAMBQ_DATA (an image folder
    for `data_source="imagefolder"`, e.g. the imagenet profile).

    Raises:
        FileNotFoundError: no data where the profile looks (the message says where it looked)."""
    if profile.data_source == "imagefolder":
        import os
        root = root or os.environ.get("DAMBQ_DATA")
        if root is None:
            raise FileNotFoundError(f"the {profile.name} profile reads an image folder (train/ and val/ inside): "
                                    "pass --data ROOT (or set DAMBQ_DATA)")
        return load_image_folder(root, image_size=profile.image_size)
    return load_cifar10(root, source=profile.data_source, train_limit=profile.train_limit,
                        test_limit=profile.test_limit)


CALIBRATION_IMAGES = 1000  # training images (no augmentation) that set the activation clips


def init_act_clips(model: nn.Module, how: str | float, data: Cifar10 | None, device: torch.device,
                   seed: int = 0) -> None:
    """Start every learnable activation clip of a freshly converted model: "mse" sets each
    to the MSE-optimal clip of its input on CALIBRATION_IMAGES training images, a number
    sets them all to it (the spec's 3.0 reproduces the authors' start).

    Why calibrate: with ResNet20's float weights a fixed 3.0 gives 75.22% before any
    quantized training and MSE clips 85.15% (results/clip-init.md), so the
    short schedules spend their steps on weights, not on moving clips."""
    if not any(isinstance(m, UniformAct) for m in model.modules()):
        return  # weight-only: no activation clip to start
    if how == "mse":
        if data is None:
            raise ValueError("act_clip_init='mse' needs the data to calibrate on")
        if isinstance(data, FolderData):
            images = data.calibration_images(CALIBRATION_IMAGES, seed).to(device)
        else:
            pick = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(seed))
            images = normalize(data.train_images[pick[:CALIBRATION_IMAGES]].to(device))
        calibrate_act_clips(model.to(device), images)
        return
    try:
        clip = float(how)
    except (TypeError, ValueError):
        raise ValueError(f"act_clip_init must be 'mse' or a positive number, got {how!r}") from None
    if not clip > 0:
        raise ValueError(f"act_clip_init must be 'mse' or a positive number, got {how!r}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("act_clip"):
                param.fill_(clip)


def compare_clip_starts(float_model: nn.Module, data: Cifar10, device: torch.device, bits: int = 4,
                        starts: tuple[str | float, ...] = (3.0, "mse"), seed: int = 0) -> list[dict]:
    """Top-1 of `float_model` converted to W<bits>A<bits>, before any quantized training,
    once per way of starting the activation clips; each row also holds the clips.

    Why: it shows what a start is worth without training (notebook 02,
    benchmarks/clip_init.py); the float model itself is left untouched."""
    rows = []
    for how in starts:
        model = convert(float_model, weight_bits=bits, act_bits=bits).to(device)
        started = time.perf_counter()
        init_act_clips(model, how, data, device, seed)
        seconds = time.perf_counter() - started
        result = evaluate(model, data.test_images, data.test_labels, device)
        rows.append({"bits": bits, "start": clip_start_label(how), "top1": result["top1"], "loss": result["loss"],
                     "seconds": seconds, "clips": act_clips(model)})
    return rows


def clip_start_label(how: str | float) -> str:
    """How an act_clip_init value reads in tables: "MSE-calibrated", "3.0 (spec)", "2.5"."""
    if how == "mse":
        return "MSE-calibrated"
    return f"{float(how)}" + (" (spec)" if float(how) == 3.0 else "")


def clip_start(stage: str, profile: Profile, out: Path) -> str | float | None:
    """How the stage's activation clips started: the profile's act_clip_init for a model
    converted from float, the parent's record for one trained on from a quantized parent
    (read from its summary, so a rerun with other settings cannot mislabel it), None for float."""
    spec = STAGES[stage]
    if spec.codebook is None:
        return None
    if STAGES[spec.parent].codebook is None:
        return profile.act_clip_init
    parent_summary = out / f"{spec.parent}.json"
    return json.loads(parent_summary.read_text()).get("act_clip_init") if parent_summary.exists() else None


def code_version() -> dict:
    """The dambq version and, in a git checkout, its commit (with "+changes" when the tree differs):
    recorded in every stage checkpoint, so a result can be traced to the code that made it."""
    import subprocess
    from importlib import metadata
    try:
        version = metadata.version("dambq")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and dirty:
            commit += "+changes"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"dambq": version, "git": commit}


def stage_made_with(stage: str, profile: Profile, out: Path, data: Cifar10, seed: int,
                    weight_target: float | None, act_target: float | None, allocator_args: dict | None) -> dict:
    """Everything that decides what a stage's checkpoint holds: saved in it, and compared on
    every resume or read-back so that a result is never relabelled with another recipe.

    Not included: the device, precision and compilation (a run may move between machines)."""
    spec = STAGES[stage]
    made = {"stage": stage, "arch": profile.arch, "data": f"{data.source}, {data_sizes(data)[0]} train / "
            f"{data_sizes(data)[1]} test", "seed": seed, "schedule": _trained_by(getattr(profile, spec.schedule)),
            "quantization": stage_quantization(stage, profile), "act_clip_init": clip_start(stage, profile, out),
            "teacher": spec.teacher}
    if spec.allocate:
        made.update(targets=[weight_target, act_target], window=list(profile.lba_window),
                    allocator={**recipe_allocator_args(profile), **(allocator_args or {})})
    return json.loads(json.dumps(made))  # tuples as lists, as the checkpoint will hold them


def _trained_by(cfg: StageConfig) -> dict:
    """The schedule fields that decide a stage's model: all but how often it is evaluated, which
    changes no weight, so checkpoints made before `eval_every` existed, or with another, still match."""
    return {k: v for k, v in asdict(cfg).items() if k != "eval_every"}


def check_made_with(checkpoint: Path, made_with: dict) -> None:
    """Refuse to resume or read back `checkpoint` under another recipe than the one it was made with.

    Raises:
        ValueError: listing each difference (or saying the checkpoint records none)."""
    recorded = load_checkpoint(checkpoint).get("meta", {}).get("made_with")
    if recorded is None:
        raise ValueError(f"{checkpoint} was written before checkpoints recorded how they were made, so it "
                         "cannot be checked against this run's settings: move or delete it and rerun the stage")
    differences = [f"{key}: checkpoint {recorded.get(key)!r}, now {made_with.get(key)!r}"
                   for key in sorted(set(recorded) | set(made_with)) if recorded.get(key) != made_with.get(key)]
    if differences:
        raise ValueError(f"{checkpoint} was made with other settings than this run's; not resuming or reading it "
                         "back under another label. Use another --out folder, or move the checkpoint away.\n  "
                         + "\n  ".join(differences))


def recipe_allocator_args(profile: Profile) -> dict:
    """BitAllocator keyword arguments of the profile's recipe, with its ramp override."""
    args = RECIPES[profile.recipe].allocator_args()
    if profile.max_ratio is not None:
        args["max_ratio"] = tuple(profile.max_ratio)
    return args


def build_stage_model(stage: str, profile: Profile, out: Path, device: torch.device,
                      data: Cifar10 | None = None, seed: int = 0, init_clips: bool = True) -> nn.Module:
    """The model a stage starts from: a fresh float net, or its parent's weights
    (converted to the stage's code-book and bits when the parent differs; a model
    converted from float gets its activation clips from `profile.act_clip_init` unless
    `init_clips` is False: a stage that resumes from its own checkpoint restores them)."""
    spec = STAGES[stage]
    model = build_model(profile.arch, num_classes(data) if data is not None else 10)
    if spec.parent is None:
        return model
    parent = STAGES[spec.parent]
    parent_state = load_checkpoint(out / f"{spec.parent}.pt", map_location="cpu")
    # finished is judged by the parent's own schedule, as its checkpoint records it: a child run with other
    # --epochs (benchmarks/lba_schedule.py --epochs 15) does not ask for the parent to be retrained
    parent_epochs = parent_state.get("config", {}).get("epochs", getattr(profile, parent.schedule).epochs)
    if parent_state["epoch"] + 1 < parent_epochs:
        raise ValueError(f"stage {stage!r} starts from {spec.parent!r}, which stopped after epoch "
                         f"{parent_state['epoch'] + 1} of {parent_epochs} (a time budget ran out?); "
                         f"run {spec.parent!r} to its end first - it resumes from {out / spec.parent}.pt")
    quant = stage_quantization(stage, profile)
    if parent.codebook is None:
        model.load_state_dict(parent_state["model"])
        model = convert(model, **quant, inplace=True)
        if init_clips:
            init_act_clips(model, profile.act_clip_init, data, device, seed)
        return model
    parent_quant = stage_quantization(spec.parent, profile)
    model = convert(model, **parent_quant, inplace=True)
    model.load_state_dict(parent_state["model"])
    bits = (quant["weight_bits"], quant["act_bits"])
    if bits != (parent_quant["weight_bits"], parent_quant["act_bits"]) and not spec.allocate:
        for module in model.modules():
            if hasattr(module, "set_bits") and not module.fixed_8bit:
                module.set_bits(*bits)
    return model


def run_stage(stage: str, profile: Profile | str = "smoke", out: str | Path = "runs/smoke",
              data: Cifar10 | None = None, data_root: str | Path | None = None,
              device: str = "auto", weight_target: float | None = 2.0, act_target: float | None = 2.0,
              seed: int = 0, progress: bool = True, allocator_args: dict | None = None,
              on_epoch_end=None, amp: bool | None = None, compile: bool | None = None,
              compile_mode: str | None = None, deadline: float | None = None) -> dict:
    """Run (or resume, or just read back) one stage; returns its summary.

    The summary names profile, data and device next to every number, and is also written
    to `<out>/<stage_file>.json`.

    Args:
        stage: a name in `STAGES` (float, w4a4, lba, w4a32, lba_a32, baselines, extensions: w4a4_kd, lba_kd).
        profile: a `Profile` or its name (schedules, network, recipe, data limits).
        out: the runs folder; the stage's parent checkpoint is read from it.
        data, data_root: the data (else loaded by the profile from `data_root`).
        weight_target, act_target: allocating stages' targets (None: that kind stays).
        seed: seeds the model, the data order and the calibration sample.
        allocator_args: extra `BitAllocator` arguments (recorded).
        on_epoch_end: called with each epoch's record (notebooks print or draw it).
        amp, compile, compile_mode: the engine's; None takes the device's default
            (`dambq.train.engine_settings`).
        deadline: a `time.time()` value after which no epoch starts; the summary then says
            `finished: false` and how many epochs were done, and a later call resumes.

    Raises:
        ValueError: an unknown stage, a parent stage that is missing or unfinished, or a
            checkpoint made under another recipe (the differences are listed)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    profile = get_profile(profile) if isinstance(profile, str) else profile
    out, device_ = Path(out), resolve_device(device)
    spec = STAGES[stage]
    cfg = getattr(profile, spec.schedule)
    data = data if data is not None else load_data(profile, data_root)
    name = stage_file(stage, weight_target, act_target, (allocator_args or {}).get("signal", "lba"), seed)
    checkpoint = out / f"{name}.pt"
    resuming = checkpoint.exists()
    made_with = stage_made_with(stage, profile, out, data, seed, weight_target, act_target, allocator_args)
    if resuming:
        check_made_with(checkpoint, made_with)
    started = time.perf_counter()
    torch.manual_seed(seed)  # a fresh float model's initial weights depend on the seed, not the process
    # a resumed or finished stage gets its clips from its checkpoint: no calibration to redo
    model = build_stage_model(stage, profile, out, device_, data=data, seed=seed, init_clips=not resuming)
    # conversion and clip calibration count in the stage's minutes, measured once: a resumed or
    # read-back stage keeps the setup time its first call recorded in the checkpoint
    setup_seconds = time.perf_counter() - started
    if resuming:
        setup_seconds = _recorded_setup_seconds(checkpoint, default=setup_seconds)
    model.to(device_)
    allocator = None
    if spec.allocate:
        allocator = BitAllocator(model, weight_target=weight_target, act_target=act_target, window=profile.lba_window,
                                 **{**recipe_allocator_args(profile), **(allocator_args or {})})
    loss_fn = None
    if spec.teacher is not None:
        teacher = build_model(profile.arch, num_classes(data))
        teacher.load_state_dict(load_checkpoint(out / f"{spec.teacher}.pt", map_location="cpu")["model"])
        loss_fn = Distillation(teacher)
    history = fit(model, data, cfg, device=device_, allocator=allocator, checkpoint=checkpoint,
                  metrics_csv=out / f"{name}.csv", seed=seed, stage=stage, progress=progress,
                  meta={"stage": stage, "profile": profile.name, "arch": profile.arch,
                        "quantization": stage_quantization(stage, profile), "recipe": profile.recipe,
                        "made_with": made_with, "setup_seconds": setup_seconds, "code": code_version(),
                        "num_classes": num_classes(data)},
                  on_epoch_end=on_epoch_end, loss_fn=loss_fn, amp=amp, compile=compile,
                  compile_mode=compile_mode, deadline=deadline)
    # the model is the last recorded epoch's, which fit has just evaluated (fp32, its layout): evaluating it again
    # cost a VGG-small stage 79 s on 2 CPU cores; only a stage with no epoch run is evaluated here
    final = ({"top1": history[-1]["test_top1"], "loss": history[-1]["test_loss"]} if history
             else evaluate(model, data, device=device_))
    summary = {"stage": stage, "description": spec.description, "profile": profile.name,
               "arch": profile.arch, "data": data.source, "device": device_name(device_),
               "act_clip_init": clip_start(stage, profile, out), "recipe": profile.recipe, "schedule": asdict(cfg),
               "quantization": stage_quantization(stage, profile),
               "precision": history[-1]["precision"] if history else "fp32",
               "compiled": history[-1]["compiled"] if history else False,
               **({"compile_mode": history[-1]["compile_mode"]} if history and "compile_mode" in history[-1] else {}),
               "epochs": cfg.epochs, "epochs_done": len(history), "finished": len(history) >= cfg.epochs,
               "top1": final["top1"], "test_loss": final["loss"], **best_epoch(history),
               "minutes": (setup_seconds + sum(r["seconds"] for r in history)) / 60,
               "setup_seconds": setup_seconds,
               "first_epoch_seconds": history[0]["seconds"] if history else None,
               "wall_minutes_this_call": (time.perf_counter() - started) / 60}
    if spec.codebook is not None:
        summary["weight_avg"], summary["act_avg"] = average_bits(model)
    if spec.teacher is not None:
        summary["teacher"] = spec.teacher
    if allocator is not None:
        summary["allocation"] = allocator.history
        summary["targets"] = [weight_target, act_target]
        summary["window"] = list(profile.lba_window)
        summary["allocator"] = {**recipe_allocator_args(profile), **(allocator_args or {})}
    summary["world_size"], summary["file"], summary["seed"] = world()[1], name, seed
    if world()[0] == 0:  # one writer under torchrun; every rank returns the same summary
        if allocator is not None:
            bit_report(model).to_csv(out / f"{name}-bits.csv")
        (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    if world()[1] > 1:
        dist.barrier()  # the next stage, on any rank, reads what rank 0 wrote
    summary["model"] = model
    return summary


def best_epoch(history: list[dict]) -> dict:
    """The epoch (1-based) with the highest test top-1 and that top-1. Tables report the
    final epoch, as the paper does; the best is kept beside it (V2's log: best 92.32, final 92.13)."""
    evaluated = [r for r in history if r["test_top1"] is not None]  # StageConfig.eval_every skips some
    if not evaluated:
        return {"best_top1": None, "best_epoch": None}
    best = max(evaluated, key=lambda r: r["test_top1"])
    return {"best_top1": best["test_top1"], "best_epoch": int(best["epoch"])}


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(model, checkpoint state) of any checkpoint `fit` wrote, rebuilt from what its meta records
    (network and conversion), weights and bits loaded.

    Raises:
        CheckpointError: unreadable file; ValueError: a checkpoint whose meta lacks the network
        or the conversion (written before they were recorded)."""
    state = load_checkpoint(path)
    meta = state.get("meta", {})
    if "arch" not in meta or ("quantization" not in meta and meta.get("stage") != "float"):
        raise ValueError(f"{path}: its meta does not record the network and conversion "
                         f"(has {sorted(meta)}); rerun the stage with this version to use it")
    model = build_model(meta["arch"], meta.get("num_classes", 10))
    if meta.get("quantization"):
        model = convert(model, **meta["quantization"], inplace=True)
    model.load_state_dict(state["model"])
    return model, state


def evaluate_checkpoint(path: str | Path, profile: Profile | str = "quick", data: Cifar10 | None = None,
                        data_root: str | Path | None = None, device: str = "auto") -> dict:
    """Top-1 and average bits of any checkpoint `fit` wrote, rebuilt from what its meta records
    (network and conversion): the evaluation-only command.

    Raises:
        CheckpointError: unreadable file; ValueError: a checkpoint whose meta lacks the network
        or the conversion (written before they were recorded)."""
    model, state = model_from_checkpoint(path)
    meta = state["meta"]
    profile = get_profile(profile) if isinstance(profile, str) else profile
    data = data if data is not None else load_data(profile, data_root)
    device_ = resolve_device(device)
    result = evaluate(model.to(device_), data, device=device_)
    row = {"checkpoint": str(path), "stage": meta.get("stage"), "arch": meta["arch"], "data": data.source,
           "epochs_trained": int(state["epoch"]) + 1, "top1": result["top1"], "test_loss": result["loss"]}
    if meta.get("quantization"):
        row["weight_avg"], row["act_avg"] = average_bits(model)
    return row


def _recorded_setup_seconds(checkpoint: Path, default: float) -> float:
    """The setup seconds the stage's first call recorded in its checkpoint's meta, else `default`."""
    recorded = load_checkpoint(checkpoint).get("meta", {}).get("setup_seconds")
    return default if recorded is None else recorded


def _target(text: str) -> float | None:
    """A bit target from the command line: a number, or "none"."""
    return None if text.lower() in ("none", "32") else float(text)


def init_distributed(device: str = "auto") -> str:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and return this
    process's device: gloo on CPU, nccl with one GPU per process (cuda:LOCAL_RANK). A single
    process is left alone.

    Multi-node: `torchrun --nnodes N --node_rank i --rdzv_backend c10d --rdzv_endpoint HOST:PORT
    --nproc_per_node G -m dambq.pipeline ...` (README, "Beyond one machine")."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return f"cuda:{local_rank}" if cuda else "cpu"


PAPER_STAGES = "float,w4a4,lba"  # the paper's pipeline: what a run without --stages trains


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--stages", default=None,
                        help=f"comma list of {list(STAGES)}; default {PAPER_STAGES} (none with --report alone)")
    parser.add_argument("--out", default=None, help="folder for checkpoints and metrics (runs/<profile>)")
    parser.add_argument("--data", default=None, help="data root (else DAMBQ_DATA, else ../shared/data)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weight-target", type=_target, default=2.0, help="average weight bits (or none)")
    parser.add_argument("--act-target", type=_target, default=2.0,
                        help="average activation bits, or none to leave them alone (weight-only stages: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default=None,
                        help="network from dambq.models.MODELS (default: the profile's; 'resnet20' is the authors')")
    parser.add_argument("--act-clip-init", default=None,
                        help="'mse' (calibrate, the default) or a number such as the spec's 3.0")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="bf16 autocast (auto: where the device has fast bf16)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile inside fit (auto: `dambq.train.default_compile`: quantized models on "
                             "CPUs with fast bf16, float ones too with AMX, any model in stages of 2000+ steps on "
                             "other CPUs; CUDA eager)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead; or cuda-graphs: the eager step as CUDA graphs "
                             "(dambq.graphs; with --compile on)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="minutes; no epoch starts that would end later (rerun to resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    parser.add_argument("--recipe", default=None, help=f"code-book and LBA ramps/floors: one of {list(RECIPES)}")
    parser.add_argument("--codebook", default=None, help="override the recipe's code-book (lookup, laplace, uniform, v1)")
    parser.add_argument("--bits", default=None, help="starting bits of the quantized stages, W,A (A may be none)")
    parser.add_argument("--granularity", choices=["channel", "layer"], default=None)
    parser.add_argument("--window", default=None, help="LBA window, first,last epoch (0-based)")
    parser.add_argument("--ramps", default=None, help="LBA ramp end, one value or weights,activations")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of every stage run")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every stage run")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of every stage run")
    parser.add_argument("--signal", default="lba", choices=["lba", "fisher", "random", "uniform"],
                        help="allocation signal of allocating stages (dambq.lba.SIGNALS); recorded, and in file names")
    parser.add_argument("--evaluate", default=None, metavar="CHECKPOINT",
                        help="only evaluate this checkpoint (any stage) on the profile's test set")
    parser.add_argument("--report", default=None,
                        help="write a markdown table of every finished stage here: alone, only that; with "
                             "--stages, after those stages have run")
    args = parser.parse_args(argv)
    overrides = {}
    if args.arch is not None:
        overrides["arch"] = args.arch
    if args.recipe is not None:
        overrides["recipe"] = args.recipe
    if args.codebook is not None:
        overrides["codebook"] = args.codebook
    if args.bits is not None:
        weight_bits, act_bits = (args.bits.split(",") + [None])[:2]
        overrides["weight_bits"] = int(weight_bits)
        overrides["act_bits"] = None if act_bits is None or act_bits.lower() in ("none", "32") else int(act_bits)
    if args.granularity is not None:
        overrides["granularity"] = args.granularity
    if args.window is not None:
        overrides["lba_window"] = tuple(int(v) for v in args.window.split(","))
    if args.ramps is not None:
        ramps = [float(v) for v in args.ramps.split(",")]
        overrides["max_ratio"] = (ramps[0], ramps[-1])
    if args.act_clip_init is not None:
        overrides["act_clip_init"] = args.act_clip_init if args.act_clip_init == "mse" else float(args.act_clip_init)
    profile = get_profile(args.profile, **overrides)
    schedule = {k: v for k, v in (("lr", args.lr), ("epochs", args.epochs), ("batch_size", args.batch_size))
                if v is not None}
    profile = with_schedule(profile, **schedule)
    if args.evaluate:
        print(json.dumps(evaluate_checkpoint(args.evaluate, profile, data_root=args.data, device=args.device)))
        return
    out = Path(args.out or f"runs/{profile.name}")
    if args.report and args.stages is None:
        _report(profile.name, out, args.report)
        return
    device = init_distributed(args.device)
    deadline = time.time() + 60 * args.time_budget if args.time_budget is not None else None
    switch = {"auto": None, "on": True, "off": False}
    data = load_data(profile, args.data)
    first_epoch = 0.0  # seconds of the last stage's first epoch (compilation included): the next one's estimate
    finished = True
    for stage in filter(None, (args.stages or PAPER_STAGES).split(",")):
        done = out / f"{stage_file(stage, args.weight_target, args.act_target, args.signal, args.seed)}.pt"
        if deadline is not None and not done.exists() and time.time() + first_epoch > deadline:
            print(f"time budget spent: {stage} not started (its first epoch would end after the budget); "
                  f"rerun the same command to continue", flush=True)
            finished = False
            break
        summary = run_stage(stage, profile, out, data=data, device=device, seed=args.seed,
                            allocator_args={"signal": args.signal, "seed": args.seed} if args.signal != "lba" else None,
                            weight_target=args.weight_target, act_target=args.act_target,
                            amp=switch[args.amp], compile=switch[args.compile], compile_mode=args.compile_mode,
                            deadline=deadline, progress=not args.no_progress)
        summary.pop("model")
        first_epoch = max(first_epoch, summary.get("first_epoch_seconds") or 0.0)
        if world()[0] == 0:
            print(json.dumps({k: v for k, v in summary.items() if k != "allocation"}), flush=True)
        if not summary["finished"]:
            print(f"time budget spent: {stage} stopped after {summary['epochs_done']} of {summary['epochs']} "
                  f"epochs; rerun the same command to resume", flush=True)
            finished = False
            break
    rank = world()[0]  # before the process group goes: after it, every rank would read 0
    if dist.is_initialized():
        dist.destroy_process_group()
    if args.report and rank == 0:  # a report of what is finished, also after a spent time budget
        if finished or any(out.glob("*.json")):
            _report(profile.name, out, args.report)
        if not finished:
            print(f"{args.report} lacks the stages not finished yet", flush=True)


def _report(profile: str, out: Path, report: str) -> None:
    """Write `report` from the finished stages in `out`; its command line rewrites it without training."""
    from .report import write_report  # the report reads this module's stages
    print(write_report(out, report, f"python -m dambq.pipeline --profile {profile} --out {out} --report {report}"))


if __name__ == "__main__":
    main()
