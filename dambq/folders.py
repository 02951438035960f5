"""Data that does not fit in memory: an ImageFolder tree streamed through torch's DataLoader.

CIFAR-10 lives on the training device as one uint8 tensor (`dambq.data`, `dambq.batches`);
ImageNet does not fit there. A root with `train/` and `val/` (or `test/`) folders of one
sub-folder per class is read by torchvision's ImageFolder, decoded by DataLoader workers
into pinned memory, and sharded over processes by a DistributedSampler. Transforms are
the usual ones: random-resized crop and flip for training, resize and centre crop for
evaluation, ImageNet's mean and std. `fit` and `run_stage` take a `FolderData` wherever
they take the resident `Cifar10`.

    data = load_image_folder("/data/imagenet")           # train/ and val/ inside
    python -m dambq.pipeline --profile imagenet --data /data/imagenet
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FolderData:
    """A streamed image-folder data set (see the module doc)."""

    root: Path
    train: object = field(repr=False)
    test: object = field(repr=False)
    image_size: int = 224
    workers: int = 4
    source: str = "imagefolder"

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_test(self) -> int:
        return len(self.test)

    def _loader(self, dataset, batch_size: int, sampler=None, device: torch.device | None = None):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                           num_workers=self.workers, pin_memory=device is not None and
                                           device.type == "cuda", drop_last=sampler is not None,
                                           persistent_workers=False)

    def train_batches(self, batch_size: int, epoch: int, seed: int, rank: int, world: int, device: torch.device,
                      memory_format=torch.contiguous_format) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of one epoch: batches of batch_size / world images (the global
        batch is `batch_size`), shuffled by (seed, epoch) identically on every process."""
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(self.train, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        for x, y in self._loader(self.train, batch_size // world, sampler, device):
            yield x.to(device, non_blocking=True).contiguous(memory_format=memory_format), y.to(device)

    def test_batches(self, batch_size: int, device: torch.device, memory_format=torch.contiguous_format,
                     rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every test image once, in order (this process's every world-th one under torchrun)."""
        shard = self.test if world == 1 else torch.utils.data.Subset(self.test, range(rank, len(self.test), world))
        for x, y in self._loader(shard, batch_size, device=device):
            yield x.to(device, non_blocking=True).contiguous(memory_format=memory_format), y.to(device)

    def calibration_images(self, count: int, seed: int = 0) -> torch.Tensor:
        """`count` training images with the evaluation transform (no augmentation), normalised."""
        pick = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(seed))[:count]
        plain = self.test.transform
        return torch.stack([plain(self.train.loader(self.train.samples[int(i)][0])) for i in pick])


def load_image_folder(root: str | Path, image_size: int = 224, workers: int | None = None) -> FolderData:
    """An ImageFolder tree with train/ and val/ (or test/) inside, as `FolderData`.

    Raises:
        FileNotFoundError: no such root, or no train/ or val/ in it (the message lists what is there).
        ValueError: the two folders hold different classes.
    """
    from torchvision import datasets, transforms
    root = Path(root).expanduser()
    train_dir = root / "train"
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if not root.is_dir() or not train_dir.is_dir() or test_dir is None:
        there = sorted(p.name for p in root.iterdir()) if root.is_dir() else "no such folder"
        raise FileNotFoundError(f"an image folder needs {root}/train and {root}/val (or test), one sub-folder per "
                                f"class; found: {there}")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = datasets.ImageFolder(str(train_dir), transforms.Compose([
        transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        normalize]))
    test = datasets.ImageFolder(str(test_dir), transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))), transforms.CenterCrop(image_size),
        transforms.ToTensor(), normalize]))
    if train.classes != test.classes:
        raise ValueError(f"{train_dir} and {test_dir} hold different classes ({len(train.classes)} vs "
                         f"{len(test.classes)})")
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    return FolderData(root, train, test, image_size, workers)
