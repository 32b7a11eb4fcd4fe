"""What one run and the paper's 189-run grid cost on one GPU: time, GPU memory and disk.

Everything but the speed comes from the code's own arithmetic: the image counts of the dataset
registry (the ``train`` split; Market-1501's gallery without its junk, which is never
extracted), the image cache's bytes (uint8, training images at 9/8 of the crop, test images at
the crop), the networks' parameter counts, the checkpoints' contents (each network's weights
and buffers and its SGD momentum, in best.pt and last.pt), the default schedule (61 epochs,
a test every 2). The speed is an input: an assumed training throughput per network (images/s,
forward and backward) and forward-only throughput, or measured ones (benchmarks/cuda_checks.sh
passes bench_train.py's). Per epoch each network trains on every training image and predicts
every one once more (the label diagnostics); network 1 extracts every query and gallery image
and its mirror at each test.

    python benchmarks/estimate_cost.py                              # the assumed speeds
    python benchmarks/estimate_cost.py --train_img_s 900 --eval_img_s 2700 --peak_gb 5.2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import DATASETS  # noqa: E402
from datasets.market1501 import OFFICIAL_COUNTS  # noqa: E402
from datasets.pipeline import resize_hw  # noqa: E402
from core_reid.options import build_parser  # noqa: E402
from core_reid.utils import ArgumentParser, check_number, run_cli  # noqa: E402
from model import build_model  # noqa: E402

# The paper's grid (reproduce.py's default): per dataset, 7 noise settings x 3 seeds of each
# method; CORE trains two networks.
GRID_DATASETS = ("market", "duke", "cuhk03")
GRID_RUNS_PER_METHOD = 7 * 3
NETWORKS = {"baseline": 1, "self": 1, "core": 2}
JUNK = {"market": OFFICIAL_COUNTS["gallery_junk_images"]}  # dropped before extraction
ASSUMED_TRAIN_IMG_S = 1000.0  # an assumption, of the order of ResNet-50 training speeds


def split_sizes(dataset: str) -> tuple[int, int]:
    """(training images of the ``train`` split, query + gallery images extracted)."""
    counts = DATASETS[dataset].official
    return (counts.train_images - counts.train_ids,
            counts.query_images + counts.gallery_images - JUNK.get(dataset, 0))


def network_bytes(arch: str, classes: int) -> tuple[int, int]:
    """(float32 bytes of one network's parameters, of its buffers)."""
    net = build_model(arch, classes, "none")
    return (4 * sum(p.numel() for p in net.parameters()),
            4 * sum(b.numel() for b in net.buffers() if b.is_floating_point()))


def run_seconds(train: int, test: int, networks: int, epochs: int, eval_every: int,
                train_img_s: float, eval_img_s: float) -> float:
    tests = len(set(range(0, epochs, eval_every)) | {epochs - 1})
    per_epoch = networks * (train / train_img_s + train / eval_img_s)
    return epochs * per_epoch + tests * 2 * test / eval_img_s


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--train_img_s", type=float, default=None,
                        help="training images/s of one network, forward and backward "
                        f"(default: {ASSUMED_TRAIN_IMG_S:.0f}, an assumption, not a "
                        "measurement)")
    parser.add_argument("--eval_img_s", type=float, default=None,
                        help="forward-only images/s (default: 3x --train_img_s)")
    parser.add_argument("--peak_gb", type=float, default=None,
                        help="measured peak GPU memory of training, GB (printed as is)")
    parser.add_argument("--arch", default="resnet50", help="backbone")
    est = parser.parse_args()
    measured = est.train_img_s is not None
    train_img_s = est.train_img_s or ASSUMED_TRAIN_IMG_S
    eval_img_s = est.eval_img_s or 3 * train_img_s
    for flag, value in (("--train_img_s", train_img_s), ("--eval_img_s", eval_img_s)):
        check_number(flag, value, value > 0, "> 0")
    defaults = build_parser("train_core.py").parse_args([])
    crop = tuple(defaults.img_size)
    epochs, eval_every = defaults.epochs, defaults.eval_every
    print(f"{est.arch} at {crop[0]}x{crop[1]}, batch {defaults.batchsize}, {epochs} epochs, a "
          f"test every {eval_every}; {train_img_s:.0f} training and {eval_img_s:.0f} "
          f"forward images/s per network ({'given' if measured else 'ASSUMED, not measured'})")
    grid_s, grid_disk = 0.0, 0
    for dataset in GRID_DATASETS:
        train, test = split_sizes(dataset)
        h, w = resize_hw(crop)
        cache = train * h * w * 3 + test * crop[0] * crop[1] * 3
        params, buffers = network_bytes(est.arch, DATASETS[dataset].official.train_ids)
        checkpoint_net = params + buffers + params  # weights, BN statistics, momentum
        print(f"\n{DATASETS[dataset].title}: {train:,} training images, {test:,} test images "
              f"extracted")
        print(f"  image cache: {gb(cache)} of GPU memory (used when at most half the free "
              f"memory) and as much disk in <dataset>/.cache; PurifyNet adds "
              f"{gb(train * crop[0] * crop[1] * 3)}")
        print(f"  one network: {gb(params)} of weights, as much again for gradients and "
              f"for momentum" + (f"; measured peak of training: {est.peak_gb:.1f} GB"
                                 if est.peak_gb else "; activations: measured by "
                                 "cuda_checks.sh"))
        for method, networks in NETWORKS.items():
            seconds = run_seconds(train, test, networks, epochs, eval_every, train_img_s,
                                  eval_img_s)
            disk = 2 * networks * checkpoint_net
            print(f"  {method:8s} run: {hours(seconds)}, best.pt + last.pt {gb(disk)}")
            grid_s += GRID_RUNS_PER_METHOD * seconds
            grid_disk += GRID_RUNS_PER_METHOD * disk
        grid_disk += cache
    runs = len(GRID_DATASETS) * GRID_RUNS_PER_METHOD * len(NETWORKS)
    print(f"\nthe paper's grid ({runs} runs) on one GPU, one run at a time: {hours(grid_s)} "
          f"({grid_s / 86400:.1f} days); disk {gb(grid_disk)} (checkpoints and caches)")


if __name__ == "__main__":
    run_cli(main)
