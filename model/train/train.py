"""Train a Darknet cfg on generated traffic-light scenes.

    python -m model.train.train --cfg model/data/traffic-lights-tiny-spp.cfg \
        --out runs/tl --epochs 24 --epoch-size 1600 --batch 16 --img-size 320 --seed 0

Each epoch draws ``--epoch-size`` fresh scenes (a pure function of seed, epoch and index),
so a run is reproducible for its seed. After every epoch the exponential moving average
(EMA) of the weights is scored (mAP@0.5) on a held-out validation set, and
``<out>/last.pt`` / ``<out>/best.pt`` (ultralytics checkpoint format, EMA weights) and
``<out>/state.pt`` (everything ``--resume`` needs) are written.

With ``--real`` (CINTA-style photos) and ``--crops`` (real light crops), each epoch mixes
``--real-count`` augmented real photos of the train split with ``--epoch-size`` generated
scenes (crops pasted into some, see :mod:`model.train.real`); validation then also scores
the held-out real split (class-agnostic AP@0.5) and the checkpoint fitness is the mean of
the two. The default model ``traffic-lights-yolov3-tiny`` was trained that way from
``python -m model.train.pretrained`` (see model/data/README.md).

The previous model (traffic-lights-tiny-spp) was trained in three stages (see model/data/README.md): 24 epochs on
256-pixel scenes at input 256; 20 epochs with ``--init`` from that model on 256-pixel
scenes magnified to input 320 (``--img-size 320 --scene-size 256``); 12 more at 416 with
``--gray 0.1``. Before each magnified stage the anchors were refitted with
``python -m model.train.anchors --img-size <input> --scene-size 256``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.darknet import Darknet
from model.layers import YOLOLayer
from model.train import yolo_dir
from model.train.dataset import SceneDataset, collate
from model.train.evaluate import evaluate, real_summary, run_proxy, run_real
from model.train.loss import LayerInfo, LossConfig, YoloLoss
from model.train.metrics import agnostic_stats
from model.train.real import MixedDataset, list_real, load_crops
from model.weights import load_weights, save_weights

logger = logging.getLogger(__name__)


def init_head_biases(net: Darknet, img_size: int) -> None:
    """Start objectness near the prior of ~8 objects per image and classes near uniform."""
    modules = list(net.module_list)
    for index, module in enumerate(modules):
        if not isinstance(module, YOLOLayer):
            continue
        conv = modules[index - 1].Conv2d
        if conv.bias is None:
            continue
        with torch.no_grad():
            bias = conv.bias.view(module.num_anchors, -1)
            cells = (img_size / module.stride) ** 2
            bias[:, 4] = math.log(8 / cells)
            bias[:, 5:] = math.log(0.6 / max(module.num_classes - 0.99, 0.01))


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float = 0.995, ramp: float = 300.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.ramp = ramp
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``."""
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        source = model.state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach(), alpha=1 - d)
            else:
                value.copy_(source[key])


def build_optimizer(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on convolution weights only (not BatchNorm, not biases)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (decay if name.endswith("Conv2d.weight") else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                             betas=(0.9, 0.999))


def learning_rate(step: int, total: int, base: float, warmup: int, final: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to ``final * base``."""
    if step < warmup:
        return base * (0.1 + 0.9 * step / warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t)))


def loss_layers(net: Darknet) -> list[LayerInfo]:
    """The anchor/stride/scale description of each yolo layer for the loss."""
    return [LayerInfo(anchors=layer.anchors.clone(), stride=layer.stride,
                      scale_x_y=layer.scale_x_y) for layer in net.yolo_layers]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/train"))
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--epoch-size", type=int, default=1600, help="scenes per epoch")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img-size", type=int, default=320, help="network input size")
    p.add_argument("--scene-size", type=int, default=None,
                   help="long side of the generated scenes (default: --img-size)")
    p.add_argument("--gray", type=float, default=0.0,
                   help="share of training samples made grayscale (0..1)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-seed", type=int, default=1000)
    p.add_argument("--val-count", type=int, default=120)
    p.add_argument("--workers", type=int, default=1, help="data loader processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--resume", type=Path, default=None, help="a state.pt to continue from")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (.pt or .weights) instead of random ones")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after the epoch that passes this wall time (0: no limit)")
    p.add_argument("--real", type=Path, default=None,
                   help="real photos (images/ + YOLO labels/, e.g. CINTA): train on the train "
                        "split, validate on the held-out split")
    p.add_argument("--real-count", type=int, default=0,
                   help="real photos per epoch (in addition to --epoch-size generated scenes)")
    p.add_argument("--crops", type=Path, default=None,
                   help="real light crops (tl-crops) to paste into generated scenes")
    p.add_argument("--crop-share", type=float, default=0.5,
                   help="share of generated scenes that get 1-3 pasted crops")
    p.add_argument("--magnify", type=float, nargs=2, default=(0.45, 1.6),
                   help="scale range of real photos relative to their pixels")
    p.add_argument("--val-real-count", type=int, default=150,
                   help="held-out real photos scored after each epoch (every n-th one)")
    p.add_argument("--small-count", type=int, default=0,
                   help="small-light samples per epoch (model.train.small: real photos "
                        "zoomed out into a real photo, or real crops pasted small)")
    p.add_argument("--small-crops", type=float, default=0.25,
                   help="share of the small-light samples made of pasted crops")
    p.add_argument("--val-proxy-count", type=int, default=0,
                   help="held-out small-light proxy scenes (1280x960) scored per epoch")
    p.add_argument("--val-size", type=int, default=None,
                   help="input size for validation (default: --img-size)")
    p.add_argument("--data", type=Path, default=None,
                   help="train on a dataset in Darknet's layout (an obj.data, or its folder: "
                        "python -m service.export) instead of generated scenes; each epoch "
                        "is scored on its valid list")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    net = Darknet(args.cfg, img_size=args.img_size)
    init_head_biases(net, args.img_size)
    if args.init is not None:
        load_weights(net, args.init)
    val_size = args.val_size or args.img_size
    val_photos: list = []
    held: list = []
    ema = ModelEMA(net)
    optimizer = build_optimizer(net, args.lr, args.weight_decay)
    criterion = YoloLoss(loss_layers(net), net.num_classes, args.img_size, LossConfig())
    data_val = []
    if args.data is not None:  # model.train.yolo_dir; no generated scenes then
        dataset, data_val = yolo_dir.training_data(args.data, net, args.seed, args.img_size)
        args.val_count = 0
    elif args.real is not None or args.crops is not None:
        train_photos = list_real(args.real, "train") if args.real is not None else []
        if args.real is not None:
            held = list_real(args.real, "val")
            step = max(1, len(held) // max(1, args.val_real_count))
            val_photos = held[::step][:args.val_real_count]
            logger.info("real photos: %d for training, %d held out (%d scored per epoch)",
                        len(train_photos), len(held), len(val_photos))
        crops = load_crops(args.crops) if args.crops is not None else None
        dataset = MixedDataset(args.seed, train_photos, args.real_count if train_photos else 0,
                               args.epoch_size, args.img_size, args.scene_size, crops,
                               args.crop_share, tuple(args.magnify), args.gray,
                               args.small_count if train_photos else 0, args.small_crops)
    else:
        dataset = SceneDataset(args.seed, args.epoch_size, args.img_size,
                               scene_size=args.scene_size, gray=args.gray)
    steps_per_epoch = math.ceil(len(dataset) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    start_epoch, best, history = 0, -1.0, []
    if args.resume is not None:
        state = torch.load(args.resume, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        ema.ema.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        best = float(state["best_fitness"])
        history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at epoch %d (best mAP %.4f)", args.resume, start_epoch, best)

    started = time.monotonic()
    for epoch in range(start_epoch, args.epochs):
        net.train()
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=False,
                            num_workers=args.workers, collate_fn=collate, drop_last=False)
        running = torch.zeros(3)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for i, (images, targets) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, args.lr, args.warmup)
            loss, parts = criterion(net(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            ema.update(net)
            running = (running * i + parts) / (i + 1)
            bar.set_postfix(box=f"{running[0]:.4f}", obj=f"{running[1]:.4f}",
                            cls=f"{running[2]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        bar.close()

        stats = evaluate(ema.ema, args.val_seed, args.val_count, val_size, args.scene_size)
        fitness = stats.mean_ap()
        aps = " ".join(f"{r.ap:.3f}" for r in stats.results(0.3))
        real = ""
        if val_photos:
            summary = real_summary(run_real(ema.ema, val_photos, val_size))
            real = (f" real R {summary['recall']:.3f} P {summary['precision']:.3f} "
                    f"AP50 {summary['ap50']:.3f} AP30 {summary['ap30']:.3f} "
                    f"colour {summary['colour']:.3f}")
            # Both matter: real photos (class-agnostic AP) and the generated classes.
            fitness = 0.5 * fitness + 0.5 * summary["ap50"]
        if held and args.val_proxy_count:
            proxy = run_proxy(ema.ema, held, args.val_seed, args.val_proxy_count, val_size)
            small = agnostic_stats(proxy, 0.5, (8.0, float("inf"))).results(0.3)[0]
            real += f" proxy>=8px R {small.recall:.3f} AP50 {small.ap:.3f}"
            # Small lights weigh as much as the other two together.
            fitness = 0.5 * fitness + 0.5 * small.ap
        line = (f"epoch {epoch} box {running[0]:.4f} obj {running[1]:.4f} cls {running[2]:.4f} "
                f"mAP50 {stats.mean_ap():.4f} AP {aps}{real} fitness {fitness:.4f} "
                f"minutes {(time.monotonic() - started) / 60:.1f}")
        if data_val:  # --data: the export's own validation images decide
            fitness = yolo_dir.score(ema.ema, data_val, val_size)
            line += f" data mAP50 {fitness:.4f}"
        history.append(line)
        logger.info(line)
        results = "\n".join(history)
        fitness_arr = np.array([fitness])
        save_weights(ema.ema, args.out / "last.pt", epoch=epoch, best_fitness=fitness_arr,
                     training_results=results, optimizer=None)
        if fitness > best:
            best = fitness
            save_weights(ema.ema, args.out / "best.pt", epoch=epoch, best_fitness=fitness_arr,
                         training_results=results, optimizer=None)
        state = {"model": net.state_dict(), "ema": ema.ema.state_dict(),
                 "ema_updates": ema.updates, "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "best_fitness": best, "history": history,
                 "torch_rng": torch.get_rng_state()}
        tmp = args.out / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(args.out / "state.pt")
        if args.max_minutes and (time.monotonic() - started) / 60 > args.max_minutes:
            logger.info("time limit reached after epoch %d", epoch)
            break
    logger.info("best validation mAP@0.5 %.4f; weights in %s", best, args.out)


if __name__ == "__main__":
    main()
