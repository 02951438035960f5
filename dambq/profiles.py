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
    arch: str = "resnet20"
    act_clip_init: str | float = "mse"   # float -> quantized: "mse" calibrates each clip, a number sets all
    note: str = ""


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
        float=StageConfig(epochs=30, lr=0.1, batch_size=128, warmup_epochs=1),
        w4a4=StageConfig(epochs=5, lr=0.01, batch_size=128),
        lba=StageConfig(epochs=10, lr=0.02, batch_size=128),
        lba_window=(0, 4),
        note="CPU-scale: all three stages on the CIFAR-10 JPEG copy in under an hour on 2 cores; "
             "short schedules, not a reproduction of the paper's numbers"),
    "paper": Profile(
        name="paper",
        float=StageConfig(epochs=300, lr=0.05, batch_size=512, weight_decay=1e-4, nesterov=False,
                          schedule="step", milestones=(150, 225)),
        w4a4=StageConfig(epochs=300, lr=0.05, batch_size=512, weight_decay=1e-4, nesterov=False,
                         schedule="step", milestones=(150, 225)),
        lba=StageConfig(epochs=300, lr=0.05, batch_size=512, weight_decay=1e-4, nesterov=False,
                        schedule="step", milestones=(150, 225)),
        lba_window=(0, 150),
        note="the spec's schedules (section 5): 300 epochs per stage, batch 512, lr 0.05, steps at 150/225"),
}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile, with top-level fields replaced by `overrides`.

    Why overrides: notebooks and the command line change one thing (say the
    float epochs) without defining a new profile; the result still records it."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]
