"""Streamed image folders (dambq.folders): the imagenet profile end to end on a tiny generated folder."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dambq.folders import load_image_folder

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, per_class: int = 8, size: int = 40) -> Path:
    """train/ and val/ with three classes of coloured noise (learnable, nothing downloaded)."""
    from torchvision.utils import save_image
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.rand(3, size, size, generator=g) * 0.4
                image[c] += 0.6
                save_image(image, folder / f"{i}.png")
    return root


def test_folder_data_streams_shards_and_calibration_images(tmp_path):
    data = load_image_folder(make_folder(tmp_path), image_size=32, workers=0)
    assert data.classes == ["blue", "green", "red"] and data.num_train == 24 and data.num_test == 24
    shards = [list(data.train_batches(8, epoch=0, seed=0, rank=r, world=2, device=torch.device("cpu")))
              for r in (0, 1)]
    assert all(x.shape == (4, 3, 32, 32) for shard in shards for x, _ in shard)  # global batch 8 over 2
    assert sum(len(y) for shard in shards for _, y in shard) == 24
    assert data.calibration_images(5).shape == (5, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="train"):
        load_image_folder(tmp_path / "train")


@pytest.mark.slow
def test_imagenet_profile_runs_end_to_end_on_a_tiny_folder(tmp_path):
    data = make_folder(tmp_path / "images")
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "dambq.pipeline", "--profile", "imagenet", "--data", str(data),
                           "--stages", "float,w4a4,lba", "--out", str(out), "--epochs", "1", "--batch-size", "8",
                           "--window", "0,0", "--device", "cpu", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "lba.json").read_text())
    assert summary["arch"] == "tv_resnet18" and summary["data"] == "imagefolder"
    assert summary["weight_avg"] <= 2.0 and summary["act_avg"] <= 2.0
    from dambq.pipeline import model_from_checkpoint
    model, state = model_from_checkpoint(out / "lba.pt")
    assert model.fc.out_features == 3 and state["meta"]["num_classes"] == 3
    missing = subprocess.run([sys.executable, "-m", "dambq.pipeline", "--profile", "imagenet", "--stages", "float",
                              "--out", str(out / "x"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in __import__("os").environ.items() if k != "DAMBQ_DATA"})
    assert missing.returncode != 0 and "--data" in missing.stderr
