"""CIFAR-10 as uint8 tensors, found, decoded once and cached (the on-device batches that
feed training are `dambq.batches`).

Sources:
- "jpeg": the JPEG copy of CIFAR-10 (cifar10-jpeg.tar.gz, read straight out of the
  tar without extracting), or any ImageFolder tree with train/ and test/ subfolders.
- "torchvision": the official binary release via torchvision.datasets.CIFAR10.
- "synthetic": a tiny deterministic learnable set for smoke tests (no files).
- "auto": find whichever of the first two is at hand (see `candidate_roots`).

Why ~430 lines: three sources (the JPEG copy, torchvision's files, synthetic), the cache,
and an error message for each way a data folder can be missing or wrong.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-10's own per-channel statistics (not ImageNet's), on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
JPEG_FOLDER_NAME = "cifar10-jpeg"
OFFICIAL_FOLDER_NAME = "cifar-10-batches-py"
SOURCES = ("auto", "jpeg", "torchvision", "synthetic")
CACHE_FORMAT_VERSION = 1  # bump when the cached layout or the decoding changes

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_EXPECTED = (
    f"expected one of: {ARCHIVE_NAME} (the JPEG copy), a {JPEG_FOLDER_NAME}/ folder, "
    f"an ImageFolder tree with train/<class>/ and test/<class>/, or {OFFICIAL_FOLDER_NAME}/ (official release)"
)


@dataclass
class Cifar10:
    """The whole data set as uint8 [N,3,32,32] images and int64 [N] labels. Kept as
    plain tensors so that it can be moved to the GPU once and indexed per batch;
    `source` records which copy it is, to be reported next to any accuracy."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    classes: tuple[str, ...] = CIFAR10_CLASSES

    def __repr__(self) -> str:
        return (
            f"Cifar10(source={self.source!r}, train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, classes={len(self.classes)})"
        )


# ----------------------------------------------------------------------------- loading


def load_cifar10(
    root: str | Path | None = None,
    source: str = "auto",
    download: bool = False,
    cache_dir: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> Cifar10:
    """Load CIFAR-10 from whichever copy is available, as uint8 tensors.

    Why one entry point: notebooks and scripts should run unchanged on a machine with
    the official release, with only the JPEG copy, or with nothing (source="synthetic").
    `train_limit`/`test_limit` take a class-balanced, seeded subset for quick profiles.
    Raises FileNotFoundError naming every path looked at when nothing is found, and
    ValueError for an unreadable archive or tree.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "synthetic":
        data = make_synthetic()
    else:
        kind, location = locate_cifar10(root, source=source, download=download, cache_dir=cache_dir)
        if kind == "torchvision":
            data = load_torchvision_cifar10(location, download=download)
        else:
            data = load_image_folder_cached(location, cache_dir=cache_dir)
    return take_subsets(data, train_limit, test_limit, seed)


def candidate_roots(root: str | Path | None = None) -> list[Path]:
    """Where "auto" looks for data, in order: the explicit `root`, else $DAMBQ_DATA,
    else ../shared/data next to the repository and next to/below the working
    directory. Kept as a function so tests and error messages use the same list."""
    if root is not None:
        return [Path(root).expanduser()]
    if os.environ.get("DAMBQ_DATA"):
        return [Path(os.environ["DAMBQ_DATA"]).expanduser()]
    repo = Path(__file__).resolve().parent.parent
    cwd = Path.cwd()
    found: list[Path] = []
    for candidate in (repo.parent / "shared" / "data", cwd.parent / "shared" / "data", cwd / "shared" / "data"):
        candidate = candidate.resolve()
        if candidate not in found:
            found.append(candidate)
    return found


def default_cache_dir() -> Path:
    """$DAMBQ_CACHE or ~/.cache/dambq: decoded tensors (and an official-release
    download, when allowed) live outside the repository and survive across runs."""
    return Path(os.environ.get("DAMBQ_CACHE") or Path.home() / ".cache" / "dambq").expanduser()


def detect_layouts(path: Path) -> list[tuple[str, Path]]:
    """What CIFAR-10 copies `path` holds, best first, as (kind, location) with kind
    "torchvision" (location = root for torchvision.datasets.CIFAR10), "archive" (a
    tar file) or "folder" (a tree with train/ and test/). The official release
    comes first because the JPEG copy is a lossy re-encoding of it."""
    if path.is_file():
        return [("archive", path)] if path.name.endswith((".tar.gz", ".tgz", ".tar")) else []
    if not path.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    if path.name == OFFICIAL_FOLDER_NAME:
        found.append(("torchvision", path.parent))
    if (path / OFFICIAL_FOLDER_NAME).is_dir():
        found.append(("torchvision", path))
    if (path / ARCHIVE_NAME).is_file():
        found.append(("archive", path / ARCHIVE_NAME))
    for folder in (path / JPEG_FOLDER_NAME, path):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            found.append(("folder", folder))
    return found


def locate_cifar10(
    root: str | Path | None = None,
    source: str = "auto",
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[str, Path]:
    """Resolve `root`/`source` to (kind, location) without reading any images, so
    that callers (and tests) can ask "is real data here?" cheaply. kind is one of
    "torchvision", "archive", "folder"."""
    if source not in ("auto", "jpeg", "torchvision"):
        raise ValueError(f"locate_cifar10 handles sources 'auto', 'jpeg', 'torchvision', not {source!r}")
    roots = candidate_roots(root)
    if source == "auto" and root is None and not os.environ.get("DAMBQ_DATA"):
        # An earlier download=True run (without a root) left the official release here.
        roots.append(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    wanted = {"auto": ("torchvision", "archive", "folder"), "jpeg": ("archive", "folder"),
              "torchvision": ("torchvision",)}[source]
    for candidate in roots:
        for kind, location in detect_layouts(candidate):
            if kind in wanted:
                return kind, location
    if download and source in ("auto", "torchvision"):
        target = Path(root).expanduser() if root is not None else (
            Path(os.environ["DAMBQ_DATA"]).expanduser() if os.environ.get("DAMBQ_DATA")
            else (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()))
        return "torchvision", target
    raise FileNotFoundError(_not_found_message(roots, source))


def _not_found_message(roots: list[Path], source: str) -> str:
    lines = [f"CIFAR-10 (source={source!r}) not found. Looked in:"]
    for candidate in roots:
        state = "does not exist" if not candidate.exists() else "exists but holds no usable copy"
        lines.append(f"  - {candidate} ({state})")
    lines.append(f"At each of these paths {_EXPECTED}.")
    lines.append("Pass root=..., or set the DAMBQ_DATA environment variable to the data folder or archive,")
    lines.append("or use download=True with source='torchvision' to fetch the official release (needs internet),")
    lines.append("or source='synthetic' for a smoke test without data.")
    return "\n".join(lines)


def load_torchvision_cifar10(root: Path, download: bool = False) -> Cifar10:
    """The official binary release via torchvision.datasets.CIFAR10, converted from
    its HWC numpy arrays to the same uint8 [N,3,32,32] tensors as the JPEG copy, so
    everything downstream is identical. Downloads only when `download` is True."""
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
        raise FileNotFoundError(
            f"official CIFAR-10 not usable at {root} (expected {root / OFFICIAL_FOLDER_NAME} with the "
            f"python batches; torchvision said: {error}). Use download=True to fetch it, "
            "set DAMBQ_DATA, or use source='jpeg'."
        ) from error
    train_images, train_labels = dataset_to_tensors(train)
    test_images, test_labels = dataset_to_tensors(test)
    return Cifar10(train_images, train_labels, test_images, test_labels,
                   "CIFAR-10 (official, torchvision)", tuple(train.classes))


def dataset_to_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's CIFAR10 keeps .data as uint8 numpy [N,32,32,3] and .targets as a
    list; turn them into contiguous uint8 [N,3,32,32] and int64 [N] tensors."""
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return images, labels


# ----------------------------------------------------------------------------- JPEG copy


def load_image_folder_cached(location: Path, cache_dir: str | Path | None = None) -> Cifar10:
    """Decode an archive or ImageFolder tree once and keep the tensors in a torch.save
    cache keyed by the source's path, size and mtime: decoding 60k JPEGs takes
    seconds, loading the cache a fraction of that. A corrupt cache is rebuilt."""
    cache_file = cache_path(location, cache_dir)
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    data = read_archive(location) if location.is_file() else read_image_folder(location)
    _write_cache(cache_file, data)
    return data


def cache_path(location: Path, cache_dir: str | Path | None = None) -> Path:
    """The cache file for one archive/tree. The key hashes its absolute path, size and
    mtime (for a tree: every file's), so a replaced or edited copy is decoded again."""
    location = location.resolve()
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{location}".encode())
    if location.is_file():
        stat = location.stat()
        digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    else:
        for path in sorted(location.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"|{path.relative_to(location)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = location.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".tar")
    return directory / f"{stem}-{digest.hexdigest()[:16]}.pt"


def _read_cache(cache_file: Path) -> Cifar10 | None:
    if not cache_file.is_file():
        return None
    try:
        state = torch.load(cache_file, map_location="cpu", weights_only=True)
        data = Cifar10(state["train_images"], state["train_labels"], state["test_images"],
                       state["test_labels"], state["source"], tuple(state["classes"]))
        _check_tensors(data)
        return data
    except Exception as error:  # any damage to the cache: ignore it and decode again
        warnings.warn(f"ignoring unreadable cache {cache_file} ({type(error).__name__}: {error}); rebuilding it")
        return None


def _write_cache(cache_file: Path, data: Cifar10) -> None:
    state = {"train_images": data.train_images, "train_labels": data.train_labels,
             "test_images": data.test_images, "test_labels": data.test_labels,
             "source": data.source, "classes": list(data.classes)}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as temp:
                torch.save(state, temp)
            os.replace(temp_name, cache_file)  # atomic: readers see the old file or the whole new one
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
    except OSError as error:  # e.g. read-only home: caching is an optimisation, not a requirement
        warnings.warn(f"could not write cache {cache_file}: {error}")


def _check_tensors(data: Cifar10) -> None:
    for name in ("train", "test"):
        images, labels = getattr(data, f"{name}_images"), getattr(data, f"{name}_labels")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} images must be uint8 [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"{name} labels must be int64 [{images.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")


def read_archive(archive: Path) -> Cifar10:
    """Read every image of a tar(.gz) ImageFolder tree straight out of the archive
    (no extraction: one sequential pass over the compressed stream) and decode them."""
    files: list[tuple[str, str, str, bytes]] = []  # (split, class, name, bytes)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                parts = Path(member.name).parts
                if len(parts) >= 3 and parts[-3] in ("train", "test"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        files.append((parts[-3], parts[-2], member.name, handle.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise ValueError(
            f"{archive} is not a readable tar archive ({type(error).__name__}: {error}); "
            f"{_EXPECTED}. Delete or re-copy the file."
        ) from error
    return _build_dataset(files, archive)


def read_image_folder(folder: Path) -> Cifar10:
    """Read an extracted ImageFolder tree (folder/train/<class>/*, folder/test/<class>/*)."""
    files = [
        (split, path.parent.name, str(path), path.read_bytes())
        for split in ("train", "test")
        for path in (folder / split).glob("*/*")
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES
    ]
    return _build_dataset(files, folder)


def _build_dataset(files: list[tuple[str, str, str, bytes]], origin: Path) -> Cifar10:
    """Sort files (tar order is not guaranteed), label classes by sorted folder name as
    ImageFolder does (which for CIFAR-10's folders is the official label order), decode."""
    files.sort(key=lambda item: (item[0], item[1], item[2]))
    classes = tuple(sorted({cls for split, cls, _, _ in files if split == "train"}))
    if not classes or not any(split == "test" for split, *_ in files):
        raise ValueError(f"no train/<class>/ and test/<class>/ images found in {origin}; {_EXPECTED}")
    label_of = {name: index for index, name in enumerate(classes)}
    unknown = sorted({cls for split, cls, _, _ in files if cls not in label_of})
    if unknown:
        raise ValueError(f"{origin}: test classes {unknown} do not appear in train/ (train classes: {list(classes)})")
    tensors = {}
    for split in ("train", "test"):
        chosen = [item for item in files if item[0] == split]
        images = decode_images([item[3] for item in chosen], [item[2] for item in chosen], origin)
        labels = torch.tensor([label_of[item[1]] for item in chosen], dtype=torch.int64)
        tensors[split] = (images, labels)
    source = "CIFAR-10 (JPEG copy)" if classes == CIFAR10_CLASSES else f"ImageFolder ({origin.name})"
    return Cifar10(*tensors["train"], *tensors["test"], source, classes)


def decode_images(blobs: list[bytes], names: list[str], origin: Path, chunk: int = 8192) -> torch.Tensor:
    """Decode encoded images into one uint8 [N,3,H,W] tensor, JPEGs in batched
    decode_jpeg calls (one C++ call per chunk instead of one per image). A failure
    is re-tried image by image only to name the offending file."""
    images: list[torch.Tensor] = []
    for start in range(0, len(blobs), chunk):
        part = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs[start:start + chunk]]
        part_names = names[start:start + chunk]
        all_jpeg = all(name.lower().endswith((".jpg", ".jpeg")) for name in part_names)
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs (torchcodec)
                warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
                if all_jpeg:
                    images += decode_jpeg(part, mode=ImageReadMode.RGB)
                else:
                    images += [decode_image(data, mode=ImageReadMode.RGB) for data in part]
        except RuntimeError:
            for data, name in zip(part, part_names):
                try:
                    decode_image(data, mode=ImageReadMode.RGB)
                except RuntimeError as error:
                    raise ValueError(f"cannot decode image {name} in {origin}: {error}") from error
            raise
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"images in {origin} have different sizes {sorted(shapes)[:5]}; expected one size (32x32)")
    return torch.stack(images)


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(num_train: int = 512, num_test: int = 256, num_classes: int = 10) -> Cifar10:
    """A tiny deterministic stand-in for CIFAR-10: each class has its own colour and
    stripe orientation, with per-image phase and noise. Why: smoke tests of training
    loops need data a model can learn above chance in a few steps, with no files."""
    generator = torch.Generator().manual_seed(1234)
    palette = torch.rand(num_classes, 3, 1, 1, generator=generator)
    coords = torch.arange(32, dtype=torch.float32)
    rows, cols = coords.view(32, 1), coords.view(1, 32)

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        angle = (labels.float() * torch.pi / num_classes).view(-1, 1, 1)
        phase = torch.rand(count, 1, 1, generator=generator) * 2 * torch.pi
        stripes = torch.sin(0.6 * (torch.cos(angle) * rows + torch.sin(angle) * cols) + phase)
        noise = 0.15 * torch.randn(count, 3, 32, 32, generator=generator)
        images = 0.6 * palette[labels] + 0.2 + 0.2 * stripes.unsqueeze(1) + noise
        return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels.to(torch.int64)

    train_images, train_labels = make(num_train)
    test_images, test_labels = make(num_test)
    classes = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class{i}" for i in range(num_classes))
    return Cifar10(train_images, train_labels, test_images, test_labels, "synthetic", classes)


# ----------------------------------------------------------------------------- subsets


def balanced_subset_indices(labels: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of a seeded subset of `limit` examples with classes as equal as
    possible (counts differ by at most one; leftovers go to the lowest class ids).
    Why: quick profiles on a few thousand images must not skew the class mix."""
    labels = labels.cpu()
    count = labels.numel()
    if limit >= count:
        return torch.arange(count)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(count, generator=generator)
    by_class = permutation[torch.argsort(labels[permutation], stable=True)]  # grouped by class, random inside
    grouped_labels = labels[by_class]
    class_counts = torch.bincount(grouped_labels)
    class_starts = torch.cumsum(class_counts, 0) - class_counts
    rank_in_class = torch.arange(count) - class_starts[grouped_labels]
    # Take the 1st of every class, then the 2nd of every class, ...: balanced for any limit.
    order = torch.argsort(rank_in_class * len(class_counts) + grouped_labels)
    return by_class[order[:limit]].sort().values


def take_subsets(data: Cifar10, train_limit: int | None, test_limit: int | None, seed: int = 0) -> Cifar10:
    """Apply `balanced_subset_indices` to the train and test splits (None = keep all)."""
    train_images, train_labels = data.train_images, data.train_labels
    test_images, test_labels = data.test_images, data.test_labels
    if train_limit is not None:
        keep = balanced_subset_indices(train_labels, train_limit, seed)
        train_images, train_labels = train_images[keep], train_labels[keep]
    if test_limit is not None:
        keep = balanced_subset_indices(test_labels, test_limit, seed)
        test_images, test_labels = test_images[keep], test_labels[keep]
    return Cifar10(train_images, train_labels, test_images, test_labels, data.source, data.classes)
