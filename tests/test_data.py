"""Data loading and batch augmentation tests. Fast, never download; the real
JPEG archive is used only when auto-discovery finds it (skipped otherwise)."""

import gzip
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg

import dambq.data as data_module
from dambq.batches import augment, batches, normalize, steps_per_epoch
from dambq.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    balanced_subset_indices,
    cache_path,
    candidate_roots,
    dataset_to_tensors,
    load_cifar10,
    locate_cifar10,
)

# torchvision 0.29 deprecates torchvision.io's codecs in favour of torchcodec (not installed).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

# ----------------------------------------------------------------------------- helpers


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """Low-frequency uint8 images that survive JPEG encoding nearly unchanged."""
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 4, 4, generator=generator)
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    return (big * 255).round().to(torch.uint8)


def write_image_folder(root: Path, classes: tuple[str, ...], per_class: dict[str, int]) -> dict:
    """root/<split>/<class>/NNNN.jpg with smooth images; returns the originals per file."""
    originals = {}
    for split, count in per_class.items():
        for class_index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            images = smooth_images(count, seed=hash((split, name)) % 1000)
            for i, image in enumerate(images):
                path = folder / f"{i:04d}.jpg"
                path.write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())
                originals[(split, name, i)] = image
    return originals


def make_archive(source_folder: Path, archive: Path, arcname: str = "cifar10-jpeg") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_folder, arcname=arcname)
    return archive


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("DAMBQ_DATA", raising=False)
    monkeypatch.delenv("DAMBQ_CACHE", raising=False)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_dtypes():
    data = load_cifar10(source="synthetic")
    assert data.source == "synthetic"
    assert data.train_images.shape == (512, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (256, 3, 32, 32) and data.test_images.dtype == torch.uint8
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (512,)
    assert set(data.train_labels.tolist()) == set(range(10))
    again = load_cifar10(source="synthetic")
    assert torch.equal(data.train_images, again.train_images)
    assert "synthetic" in repr(data) and "512" in repr(data)


def test_synthetic_is_learnable():
    """A nearest-class-mean classifier must be far above chance (10%)."""
    data = load_cifar10(source="synthetic")
    train = normalize(data.train_images).flatten(1)
    test = normalize(data.test_images).flatten(1)
    means = torch.stack([train[data.train_labels == c].mean(0) for c in range(10)])
    predictions = torch.cdist(test, means).argmin(1)
    assert (predictions == data.test_labels).float().mean() > 0.5


def test_unknown_source():
    with pytest.raises(ValueError, match="synthetic"):
        load_cifar10(source="imagenet")


# ----------------------------------------------------------------------------- subsets


def test_class_balanced_limit():
    data = load_cifar10(source="synthetic", train_limit=105, test_limit=50, seed=3)
    train_counts = torch.bincount(data.train_labels, minlength=10)
    assert data.train_images.shape[0] == 105 and train_counts.max() - train_counts.min() <= 1
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [5] * 10
    same = load_cifar10(source="synthetic", train_limit=105, test_limit=50, seed=3)
    other = load_cifar10(source="synthetic", train_limit=105, test_limit=50, seed=4)
    assert torch.equal(data.train_images, same.train_images)
    assert not torch.equal(data.train_images, other.train_images)


def test_limit_picks_matching_image_label_pairs():
    full = load_cifar10(source="synthetic")
    keep = balanced_subset_indices(full.train_labels, 40, seed=0)
    subset = load_cifar10(source="synthetic", train_limit=40, seed=0)
    assert torch.equal(subset.train_images, full.train_images[keep])
    assert torch.equal(subset.train_labels, full.train_labels[keep])


def test_limit_with_unbalanced_classes_and_large_limit():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 20)
    counts = torch.bincount(labels[balanced_subset_indices(labels, 20)], minlength=3)
    assert counts.tolist() == [9, 3, 8]
    assert balanced_subset_indices(labels, 1000).tolist() == list(range(73))


# ----------------------------------------------------------------------------- normalize / augment


def test_normalize_statistics():
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    at_mean = (mean * 255).round().to(torch.uint8).expand(2, 3, 8, 8)
    one_std_up = ((mean + std) * 255).round().to(torch.uint8).expand(2, 3, 8, 8)
    out = normalize(at_mean)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 8, 8)
    assert out.abs().max() < 0.01
    assert (normalize(one_std_up) - 1).abs().max() < 0.01
    assert torch.allclose(normalize(at_mean.float() / 255), out, atol=1e-5)  # [0,1] floats accepted
    assert normalize(at_mean[0]).shape == (3, 8, 8)  # single image


def all_shifts_and_flips(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Every crop of the zero-padded image and its mirror: [2*(2p+1)^2, C, H, W]."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    crops = [padded[:, dy:dy + height, dx:dx + width] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    crops = torch.stack(crops)
    return torch.cat([crops, crops.flip(-1)])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_is_a_shifted_or_flipped_copy(dtype):
    images = torch.randint(1, 256, (32, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(dtype)
    out = augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == dtype
    for original, augmented in zip(images, out):
        candidates = all_shifts_and_flips(original)
        assert (candidates == augmented).flatten(1).all(1).any()


def test_augment_varies_and_is_reproducible():
    images = torch.randint(1, 256, (256, 3, 32, 32), dtype=torch.uint8)
    first = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(5)))
    unchanged = (first == images).flatten(1).all(1).float().mean()
    assert unchanged < 0.1  # identity crop without flip has probability 1/162
    zero_border = (first == 0).flatten(1).any(1).float().mean()
    assert zero_border > 0.5  # most crops bring in padding (pixels were >= 1)
    assert torch.equal(augment(images, None, pad=0, flip=False), images)


def test_augment_flip_only():
    images = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=0)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 0.3 < mirrored.float().mean() < 0.7


# ----------------------------------------------------------------------------- batches


def test_batches_cover_the_set_in_order_without_shuffle():
    data = load_cifar10(source="synthetic")
    seen_images, seen_labels = [], []
    for x, y in batches(data.train_images, data.train_labels, 100, shuffle=False, augment=False, device="cpu"):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        seen_images.append(x)
        seen_labels.append(y)
    assert len(seen_images) == steps_per_epoch(512, 100) == 6
    assert seen_images[-1].shape[0] == 12
    assert torch.allclose(torch.cat(seen_images), normalize(data.train_images))
    assert torch.equal(torch.cat(seen_labels), data.train_labels)


def test_batches_shuffle_augment_drop_last():
    data = load_cifar10(source="synthetic")
    generator = torch.Generator().manual_seed(0)
    shapes, labels = [], []
    for x, y in batches(data.train_images, data.train_labels, 100, shuffle=True, augment=True, device="cpu",
                        generator=generator, drop_last=True, memory_format=torch.channels_last):
        assert x.is_contiguous(memory_format=torch.channels_last)
        shapes.append(tuple(x.shape))
        labels.append(y)
    assert shapes == [(100, 3, 32, 32)] * 5 == [(100, 3, 32, 32)] * steps_per_epoch(512, 100, drop_last=True)
    labels = torch.cat(labels)
    assert not torch.equal(labels, data.train_labels[:500])  # shuffled
    assert torch.bincount(labels, minlength=10).sum() == 500


def test_batches_labels_follow_images_when_shuffled():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).contiguous()
    labels = torch.arange(20)
    for x, y in batches(images, labels, 7, shuffle=True, augment=False, device="cpu",
                        generator=torch.Generator().manual_seed(0)):
        raw = x * torch.tensor(CIFAR10_STD).view(3, 1, 1) * 255 + torch.tensor(CIFAR10_MEAN).view(3, 1, 1) * 255
        assert torch.allclose(raw[:, 0, 0, 0], y.float(), atol=1e-3)


# ----------------------------------------------------------------------------- locating data


def test_candidate_roots_order(no_env, monkeypatch, tmp_path):
    assert candidate_roots(tmp_path) == [tmp_path]
    defaults = candidate_roots()
    repo = Path(data_module.__file__).resolve().parent.parent
    assert (repo.parent / "shared" / "data").resolve() in defaults
    monkeypatch.setenv("DAMBQ_DATA", str(tmp_path / "elsewhere"))
    assert candidate_roots() == [tmp_path / "elsewhere"]


def test_missing_root_names_the_path(no_env, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(missing, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(missing) in message and "DAMBQ_DATA" in message and "download=True" in message
    assert "cifar10-jpeg.tar.gz" in message


def test_empty_env_root_names_the_path(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DAMBQ_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_cifar10(source="jpeg", cache_dir=tmp_path / "cache")


def test_torchvision_source_missing_never_downloads(no_env, tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10(tmp_path, source="torchvision", cache_dir=tmp_path / "cache")


def test_auto_prefers_the_official_release(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"")
    assert locate_cifar10(tmp_path) == ("torchvision", tmp_path)
    assert locate_cifar10(tmp_path, source="jpeg") == ("archive", tmp_path / "cifar10-jpeg.tar.gz")


def test_dataset_to_tensors_converts_hwc():
    class FakeOfficial:
        data = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8).numpy()
        targets = [3, 1, 4, 1]

    images, labels = dataset_to_tensors(FakeOfficial())
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 and images.is_contiguous()
    assert torch.equal(images[2, 1], torch.from_numpy(FakeOfficial.data[2, :, :, 1]))
    assert labels.tolist() == [3, 1, 4, 1] and labels.dtype == torch.int64


def test_corrupt_archive_is_a_clear_error(tmp_path):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(ValueError, match="not a readable tar archive") as info:
        load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert str(archive) in str(info.value)


def test_truncated_archive_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path / "tree", ("a", "b"), {"train": 20, "test": 5})
    good = make_archive(tmp_path / "tree", tmp_path / "good.tar.gz")
    truncated = tmp_path / "cifar10-jpeg.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=str(truncated)):
        load_cifar10(tmp_path, source="jpeg", cache_dir=tmp_path / "cache")


def test_corrupt_jpeg_is_named(tmp_path):
    write_image_folder(tmp_path / "tree", ("a", "b"), {"train": 2, "test": 1})
    bad = tmp_path / "tree" / "train" / "b" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(ValueError, match="0001.jpg"):
        load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- real JPEG trees


def check_loaded_tree(data, originals, classes):
    assert data.classes == classes
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        expected_labels = [classes.index(name) for (s, name, _) in sorted(originals) if s == split]
        assert labels.tolist() == expected_labels
        expected = torch.stack([originals[key] for key in sorted(originals) if key[0] == split])
        assert (images.float() - expected.float()).abs().mean() < 3  # JPEG is lossy


def test_image_folder_tree(tmp_path):
    classes = ("cats", "dogs", "zebras")
    originals = write_image_folder(tmp_path / "tree", classes, {"train": 4, "test": 2})
    data = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert data.source == "ImageFolder (tree)"
    assert data.train_images.shape == (12, 3, 32, 32) and data.test_images.shape == (6, 3, 32, 32)
    check_loaded_tree(data, originals, classes)


@pytest.mark.parametrize("point_at", ["archive", "folder_with_archive", "extracted", "parent_of_extracted"])
def test_cifar_layout_archive_and_folders(tmp_path, point_at):
    originals = write_image_folder(tmp_path / "data" / "cifar10-jpeg", CIFAR10_CLASSES, {"train": 2, "test": 1})
    (tmp_path / "packed").mkdir()
    archive = make_archive(tmp_path / "data" / "cifar10-jpeg", tmp_path / "packed" / "cifar10-jpeg.tar.gz")
    root = {"archive": archive, "folder_with_archive": archive.parent,
            "extracted": tmp_path / "data" / "cifar10-jpeg", "parent_of_extracted": tmp_path / "data"}[point_at]
    data = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert data.source == "CIFAR-10 (JPEG copy)"
    check_loaded_tree(data, originals, CIFAR10_CLASSES)


def test_cache_is_used_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "tree", ("a", "b"), {"train": 3, "test": 2})
    archive = make_archive(tmp_path / "tree", tmp_path / "cifar10-jpeg.tar.gz")
    cache_dir = tmp_path / "cache"
    first = load_cifar10(archive, cache_dir=cache_dir)
    cache_file = cache_path(archive, cache_dir)
    assert cache_file.is_file() and list(cache_dir.iterdir()) == [cache_file]  # no temp files left

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again although a cache exists")

    with monkeypatch.context() as patch:
        patch.setattr(data_module, "read_archive", must_not_decode)
        cached = load_cifar10(archive, cache_dir=cache_dir)
    assert torch.equal(cached.train_images, first.train_images) and cached.source == first.source

    cache_file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_cifar10(archive, cache_dir=cache_dir)
    assert torch.equal(rebuilt.train_images, first.train_images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cifar10(archive, cache_dir=cache_dir)  # the rebuilt cache is valid again


def test_cache_key_changes_with_the_archive(tmp_path):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(gzip.compress(b"x"))
    before = cache_path(archive, tmp_path)
    archive.write_bytes(gzip.compress(b"xy" * 100))
    assert cache_path(archive, tmp_path) != before


# ----------------------------------------------------------------------------- the real archive, when present


def real_jpeg_copy() -> Path:
    try:
        kind, location = locate_cifar10(source="jpeg")
    except FileNotFoundError:
        pytest.skip("CIFAR-10 JPEG copy not found (set DAMBQ_DATA)")
    return location


@pytest.fixture(scope="module")
def real_cache_dir(tmp_path_factory):
    """One decode per test session, kept out of the user's cache."""
    return tmp_path_factory.mktemp("real-cache")


def test_real_archive_with_limits(real_cache_dir):
    location = real_jpeg_copy()
    data = load_cifar10(location, source="jpeg", cache_dir=real_cache_dir, train_limit=2000, test_limit=1000)
    assert data.source == "CIFAR-10 (JPEG copy)" and data.classes == CIFAR10_CLASSES
    assert data.train_images.shape == (2000, 3, 32, 32) and data.test_images.shape == (1000, 3, 32, 32)
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [200] * 10
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [100] * 10
    normalized = normalize(data.train_images)
    assert normalized.mean((0, 2, 3)).abs().max() < 0.1
    assert (normalized.std((0, 2, 3)) - 1).abs().max() < 0.1


@pytest.mark.slow
def test_real_archive_full(real_cache_dir):
    location = real_jpeg_copy()
    data = load_cifar10(location, source="jpeg", cache_dir=real_cache_dir)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
