"""Run by tests/test_distributed.py, once alone and once under torchrun with 2 gloo processes:
the smoke pipeline float -> w4a4 -> lba, then every rank saves the bits it holds. With a
second argument "kill", rank 0 dies after the first lba epoch (its checkpoint written)."""
import sys
from pathlib import Path

import torch

from dambq import quant_layers
from dambq.pipeline import init_distributed, run_stage
from dambq.profiles import get_profile
from dambq.train import world


def main(out: Path, kill: bool = False) -> None:
    device = init_distributed("cpu")
    torch.set_num_threads(1)
    profile = get_profile("smoke")

    def die(record):
        if kill and record["stage"] == "lba":
            raise SystemExit(3)  # a killed run: torchrun stops every rank

    for stage in ("float", "w4a4", "lba"):
        summary = run_stage(stage, profile, out, device=device, progress=False, on_epoch_end=die)
    rank, size = world()
    bits = {name: (layer.weight_bits.clone(), layer.act_bits.clone()) for name, layer in quant_layers(summary["model"])}
    torch.save({"bits": bits, "world_size": size, "top1": summary["top1"]}, out / f"bits-rank{rank}.pt")


if __name__ == "__main__":  # (pytest --doctest-modules imports this file: nothing may run on import)
    main(Path(sys.argv[1]), kill=sys.argv[2:] == ["kill"])
