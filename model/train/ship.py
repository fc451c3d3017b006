"""Copy a training checkpoint to the file the service loads, weights stored as float16.

    python -m model.train.ship runs/s2/best.pt model/data/traffic-lights-yolov3-tiny.pt

Keeps the ultralytics checkpoint layout (``epoch``, ``best_fitness``, ``training_results``,
``model``, ``optimizer`` = None); float tensors are halved (the engine loads them into its
float32 network, so only the file shrinks: the scores in model/data/README.md are those of
the shipped file). ``--float32`` keeps full precision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.weights import read_checkpoint


def ship(source: Path, target: Path, half: bool = True) -> None:
    """Write ``source``'s checkpoint to ``target`` (optionally with float16 tensors)."""
    checkpoint = read_checkpoint(source)
    model = {k: (v.half() if half and v.is_floating_point() else v).clone()
             for k, v in checkpoint["model"].items()}
    out = {"epoch": checkpoint.get("epoch", -1), "best_fitness": checkpoint.get("best_fitness"),
           "training_results": checkpoint.get("training_results"), "model": model,
           "optimizer": None}
    tmp = target.with_name(target.name + ".tmp")
    torch.save(out, tmp)
    tmp.replace(target)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--float32", action="store_true", help="keep float32 tensors")
    args = parser.parse_args(argv)
    ship(args.source, args.target, half=not args.float32)


if __name__ == "__main__":
    main()
