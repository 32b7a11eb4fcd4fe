"""Time the released numerics against the fast ones, for baseline, SELF and CORE.

(a) ``--numerics released``: PIL decode + torchvision transforms in DataLoader workers, fp32,
    TF32 off, default memory format, plain SGD;
(b) ``--numerics fast``: images decoded once and held in device memory, augmentation on the
    device, and on CUDA bf16 autocast + TF32 + channels_last + fused SGD.
For each it reports the data path alone (one epoch of decoded, augmented batches), training
images/s, seconds per epoch and (on CUDA) peak GPU memory per method, and feature extraction +
scoring of the test set (with its forward images/s: each image and its mirror).

    python benchmarks/bench_train.py --device cuda                 # Market-sized, ResNet-50
    python benchmarks/bench_train.py --device cpu                  # scaled down, minutes
    python benchmarks/bench_train.py --data_dir ../ --dataset market   # a real prepared dataset

Seconds per epoch are measured over --steps training steps after --warmup steps and scaled to
the epoch's number of batches (--steps 0: a whole epoch).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_core  # noqa: E402
from datasets.noise import NoisyLabels, random_noise  # noqa: E402
from core_reid.engine import build_peers, train_one_epoch  # noqa: E402
from core_reid.run_state import RunState  # noqa: E402
from methods import METHODS  # noqa: E402
from core_reid.numerics import apply_tf32, choose_numerics  # noqa: E402
from core_reid.run_data import load_data  # noqa: E402
from eval_utils import get_test_acc  # noqa: E402
from core_reid.utils import ArgumentParser, UserError, check_number, run_cli  # noqa: E402

PRESET_FOR = {"cuda": "market", "cpu": "demo"}
SETTINGS_FOR = {  # (arch, crop H, crop W): the real setting on CUDA, a small one on the CPU
    "cuda": ("resnet50", 256, 128),
    "cpu": ("resnet18", 128, 64),
}


class FirstBatches:
    """The first ``count`` batches of an epoch (count 0: all), for timing a part of an epoch."""

    def __init__(self, batches, count: int):
        self.inner, self.count = batches, count or len(batches)

    def __len__(self) -> int:
        return min(self.count, len(self.inner))

    def batches(self, seed: int = 0):
        for step, batch in enumerate(self.inner.batches(seed)):
            if step == self.count:
                return
            yield batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_data(root: Path, preset: str, workers: int) -> Path:
    """A prepared synthetic dataset under ``root`` (generated once)."""
    from datasets.synthetic import make_preset
    from datasets.prepare import prepare
    prepared = root / "market"
    if not (root / ".bench_ready").is_file():
        print(f"generating the synthetic '{preset}' dataset in {root} (once)", flush=True)
        download = make_preset(root, preset, workers=workers, progress=True)
        prepare(download, prepared, progress=False)
        (root / ".bench_ready").touch()
    return root


def time_data_path(data, device: torch.device) -> float:
    """Images/s of one epoch of training batches, pixels on the device, no network."""
    sync(device)
    tic, seen = time.time(), 0
    for images, index in data.train.batches(seed=0):
        seen += len(index)
    images.sum()  # the last batch has really been produced
    sync(device)
    return seen / (time.time() - tic)


def time_training(args, method_name: str, data, device, numerics, steps: int,
                  warmup: int) -> float:
    """Training images/s of ``method_name`` (both peers for CORE) over ``steps`` steps."""
    method = METHODS[method_name](args)
    peers = build_peers(args, method, data.num_classes, device, numerics)
    noisy, is_clean = random_noise(data.true_labels, 0.2, data.num_classes, 1)
    labels = NoisyLabels(data.true_labels, noisy, is_clean, {})
    run = RunState(args, method, peers, data, labels, device, numerics, method.lr_schedule(args))
    method.setup(run)
    full = data.train
    epoch = args.stage1_epochs + 1 if method.networks == 2 else 0  # CORE: co-refining stage
    data.train = FirstBatches(full, warmup)
    train_one_epoch(run, epoch)
    data.train = FirstBatches(full, steps)
    sync(device)
    tic = time.time()
    seen = train_one_epoch(run, epoch).seen
    sync(device)
    data.train = full
    return seen / (time.time() - tic)


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cuda", "cpu"], help="where to run")
    parser.add_argument("--data_dir", default=None, help="a prepared dataset's parent folder "
                        "(default: generate a synthetic one in --synthetic_dir)")
    parser.add_argument("--dataset", default="market", help="dataset name under --data_dir")
    parser.add_argument("--synthetic_dir", default="./bench_data",
                        help="where the synthetic dataset is generated (once)")
    parser.add_argument("--preset", default=None, help="synthetic preset (default: market "
                        "on CUDA, demo on the CPU)")
    parser.add_argument("--arch", default=None, help="backbone (default: resnet50 on CUDA, "
                        "resnet18 on the CPU)")
    parser.add_argument("--img_size", type=int, nargs=2, default=None,
                        help="training crop H W (default: 256 128 on CUDA, 128 64 on the CPU)")
    parser.add_argument("--batchsize", type=int, default=32, help="batch size")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader / decoding processes, the same for both pipelines")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per "
                        "method (0: a whole epoch; default: 0 on CUDA, 10 on the CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--methods", nargs="+", default=["baseline", "self", "core"],
                        choices=["baseline", "self", "core"], help="methods to time")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (fast path)")
    bench = parser.parse_args()
    for flag, value in (("--steps", bench.steps or 0), ("--warmup", bench.warmup)):
        check_number(flag, value, value >= 0, ">= 0")

    device = torch.device(bench.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device; use --device cpu")
    arch, h, w = SETTINGS_FOR[device.type]
    arch = bench.arch or arch
    crop = bench.img_size or [h, w]
    steps = bench.steps if bench.steps is not None else (0 if device.type == "cuda" else 10)
    data_dir = Path(bench.data_dir) if bench.data_dir else synthetic_data(
        Path(bench.synthetic_dir), bench.preset or PRESET_FOR[device.type], bench.workers)

    rows = {}
    for mode in ("released", "fast"):
        args = train_core.parse_args(train_core.build_parser(), [
            "--data_dir", str(data_dir), "--dataset", bench.dataset, "--arch", arch,
            "--pretrained", "none", "--img_size", *map(str, crop), "--batchsize",
            str(bench.batchsize), "--workers", str(bench.workers), "--numerics", mode,
            "--device", device.type,
            *(["--compile"] if mode == "fast" and bench.compile else [])])
        numerics = choose_numerics(args, device)
        tic = time.time()
        data = load_data(args, device, numerics)  # the fast path decodes (or reads its cache)
        setup_s = time.time() - tic
        numerics = dataclasses.replace(numerics, data_path=data.data_path)
        apply_tf32(numerics, device)
        print(f"[{mode}] {numerics.describe()}", flush=True)
        n_train, n_batches = len(data.true_labels), len(data.train)
        row = {"setup_s": setup_s, "data_img_s": time_data_path(data, device)}
        print(f"[{mode}] setup {setup_s:.1f}s, data path {row['data_img_s']:.0f} img/s",
              flush=True)
        for method in bench.methods:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rate = time_training(args, method, data, device, numerics, steps, bench.warmup)
            row[method] = rate
            peak = (f", peak {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB"
                    if device.type == "cuda" else "")
            print(f"[{mode}] {method}: {rate:.0f} img/s, {n_train / rate:.1f} s/epoch{peak}",
                  flush=True)
        tic = time.time()
        net = build_peers(args, METHODS["baseline"](args), data.num_classes, device,
                          numerics)[0].net
        get_test_acc(net, data.query, data.gallery, device, numerics.amp,
                     numerics.channels_last)
        sync(device)
        row["test_s"] = time.time() - tic
        extracted = 2 * (len(data.query) + len(data.gallery))  # images and their mirrors
        print(f"[{mode}] test: {row['test_s']:.1f} s, {extracted / row['test_s']:.0f} forward "
              "img/s (scoring included)", flush=True)
        rows[mode] = row
        del data

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}, {arch} {crop[0]}x{crop[1]}, batch "
          f"{bench.batchsize}, {n_train} training images ({n_batches} batches), "
          f"{bench.workers} workers, {'whole epoch' if steps == 0 else f'{steps} steps'}")
    print(f"{'':28s}{'released':>16s}{'fast':>12s}{'ratio':>8s}")
    lines = [("data path (img/s)", "data_img_s", False)]
    for method in bench.methods:
        lines.append((f"{method} (img/s)", method, False))
        lines.append((f"{method} (s/epoch)", method, True))
    lines.append(("test extract+score (s)", "test_s", None))
    for label, key, per_epoch in lines:
        a, b = rows["released"][key], rows["fast"][key]
        if per_epoch:
            a, b = n_train / a, n_train / b
        ratio = a / b if per_epoch or per_epoch is None else b / a
        print(f"{label:28s}{a:16.1f}{b:12.1f}{ratio:7.1f}x")
    print(f"fast one-time setup (decode + cache): {rows['fast']['setup_s']:.1f}s")


if __name__ == "__main__":
    run_cli(main)
