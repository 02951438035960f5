"""On-device batches: normalisation, augmentation and shuffling of whole uint8 batches on
the training device (airbench style: no DataLoader, no per-image Python work per step).
Where the images come from is `dambq.data`."""
from __future__ import annotations

import functools
from typing import Iterator

import torch
import torch.nn.functional as F

from .data import CIFAR10_MEAN, CIFAR10_STD

def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (or floats already on the [0,1] scale) -> float32 standardised with
    CIFAR-10's channel mean/std, on the images' own device. Done per batch on the
    training device so the data set itself stays compact uint8."""
    mean, std = _mean_std(images.device, 255.0 if images.dtype == torch.uint8 else 1.0)
    return (images.float() - mean) / std


@functools.cache
def _mean_std(device: torch.device, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's channel mean and std on `device`, made once: on a GPU a fresh tensor per batch
    is a blocking host-to-device copy inside the training loop."""
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(-1, 1, 1) * scale
    std = torch.tensor(CIFAR10_STD, device=device).view(-1, 1, 1) * scale
    return mean, std


def augment(images: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding `pad` plus random horizontal flip, for a whole
    [N,C,H,W] batch at once on its own device: pad once, then gather each image's
    window with per-image offsets (the flip is folded into the column index). No
    Python loop over images, so it keeps up with a GPU. Keeps dtype and shape."""
    count, channels, height, width = images.shape
    random_device = generator.device if generator is not None else images.device
    row_shift = torch.randint(0, 2 * pad + 1, (count, 1), generator=generator, device=random_device).to(images.device)
    col_shift = torch.randint(0, 2 * pad + 1, (count, 1), generator=generator, device=random_device).to(images.device)
    rows = row_shift + torch.arange(height, device=images.device)  # [N,H] rows of the padded image
    cols = col_shift + torch.arange(width, device=images.device)  # [N,W]
    if flip:
        flipped = torch.rand(count, 1, generator=generator, device=random_device).to(images.device) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    batch_index = torch.arange(count, device=images.device).view(-1, 1, 1, 1)
    channel_index = torch.arange(channels, device=images.device).view(1, -1, 1, 1)
    return padded[batch_index, channel_index, rows.view(count, 1, height, 1), cols.view(count, 1, 1, width)]


_augment_batch = augment  # batches() has a parameter called `augment` that shadows the function


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalised float32 images, int64 labels) batches on `device`.

    Why this instead of a DataLoader: the uint8 set (150 MB for CIFAR-10) is moved to
    the device once per call, then each batch is one index + augment + normalise on
    the device. For a given `generator` seed the order and augmentation are
    reproducible; a generator on `device` avoids host-to-device copies of the random
    numbers. `memory_format=torch.channels_last` suits convs on tensor cores.
    """
    images = images.to(device)
    labels = labels.to(device)
    count = images.shape[0]
    if shuffle:
        random_device = generator.device if generator is not None else images.device
        order = torch.randperm(count, generator=generator, device=random_device).to(images.device)
    else:
        order = torch.arange(count, device=images.device)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        batch = images[index]
        if augment:
            batch = _augment_batch(batch, generator)
        yield normalize(batch).contiguous(memory_format=memory_format), labels[index]


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `batches` yields, for sizing learning-rate schedules up front."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)
