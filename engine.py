"""The training loop shared by train_self.py and train_core.py.

One run trains one network (baseline, SELF) or two peers on the same batches (CORE), on labels
with injected noise, and tests network 1 every ``--eval_every`` epochs. Read top to bottom:
arguments, setup (device, data, noise, networks), the epoch loop, what is saved.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

import losses
from datasets import load_split
from datasets.folder import ReIDFolder
from datasets.market1501 import JUNK_PID
from datasets.noise import (pattern_noise, random_noise, save_noise,
                            second_labels_from_logits)
from datasets.pipeline import (CachedBatches, LoaderBatches, cache_fits, centre_transform,
                               decoded_split, default_cache_dir, epoch_seed, eval_transform,
                               resize_hw, train_transform)
from eval_utils import (EVAL_PROTOCOLS, EvalSet, eval_outputs, get_test_acc,
                        scoring_identities)
from model import ARCHS, build_model
from recorder import TEST_KEYS, RunRecorder, format_scores
from utils import UserError

METHODS = ("baseline", "self", "core")


# --------------------------------------------------------------------------------------------
# Arguments. The defaults are the released code's; every one of them is a flag.

def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags both scripts share."""
    a = parser.add_argument
    # data and noise
    a("--dataset", default="market", help="dataset name; data is read from DATA_DIR/<name>/")
    a("--data_dir", default="../", help="folder holding the prepared dataset folder "
      "(prepare_market.py --dst DATA_DIR/market)")
    a("--train_split", default="train", choices=["train", "train_all"],
      help="training split: 'train' (the released code's; one image per identity held out in "
      "val) or 'train_all'")
    a("--noise_ratio", type=float, default=0.2, help="fraction of each identity's training "
      "labels to corrupt, in [0, 1)")
    a("--pattern", action="store_true", help="patterned noise: a corrupted sample takes the "
      "class a clean model confuses it with (needs --pattern_model); default: random noise")
    a("--pattern_model", default=None, help="checkpoint of a baseline trained on clean labels "
      "(train_self.py --method baseline --noise_ratio 0), used by --pattern")
    a("--seed", type=int, default=1, help="seed of the noise, the initialisation and the batches")
    # model
    a("--arch", default="resnet50", choices=sorted(ARCHS), help="backbone")
    a("--pretrained", default="imagenet", help="'imagenet' (torchvision weights, downloaded), "
      "'none' (from scratch) or the path of a local torchvision ResNet state dict")
    a("--head_act", default="leaky_relu", choices=["leaky_relu", "relu"],
      help="head activation: the released code's LeakyReLU(0.1), or the paper's ReLU")
    a("--dropout", type=float, default=0.5, help="dropout after the 512-d head")
    # optimisation
    a("--lr", type=float, default=0.01, help="backbone learning rate; the new head gets 10x")
    a("--batchsize", type=int, default=32, help="batch size")
    a("--epochs", type=int, default=61, help="number of epochs (the released code runs "
      "epochs 0..60); with --resume, extends a finished run")
    a("--milestones", type=int, nargs="+", default=[20, 50],
      help="epochs at which the learning rate is multiplied by 0.1")
    a("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    a("--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    a("--img_size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"),
      help="training crop; images are resized to 9/8 of it first, test images to it")
    # running
    a("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where to train")
    a("--gpu", default=None, help="CUDA device index to use (the released code's flag)")
    a("--workers", type=int, default=4, help="processes decoding images")
    a("--data_path", default="auto", choices=["auto", "cache", "loader"],
      help="'cache': decode once, keep the split in device memory, augment on the device; "
      "'loader': PIL + DataLoader every epoch (released); 'auto': cache where it fits")
    a("--amp", default="auto", choices=["auto", "on", "off"],
      help="bf16 autocast ('auto': on for CUDA, off on the CPU)")
    a("--compile", action="store_true", help="torch.compile the networks (CUDA)")
    a("--eval_every", type=int, default=2, help="test network 1 every N epochs (and at the end)")
    a("--eval_protocol", default="standard", choices=EVAL_PROTOCOLS,
      help="'standard' Market-1501 protocol, or 'released': the released code's mis-read "
      "cameras and junk (optimistic; for comparison only)")
    a("--output_dir", default="./res", help="runs are written to OUTPUT_DIR/<run name>/")
    a("--run_name", default=None, help="run folder name (default: from dataset, method, noise, "
      "lr and seed)")
    a("--resume", nargs="?", const="auto", default=None,
      help="continue a run: 'auto' (or no value) = the last checkpoint in the run folder, or "
      "the path of a checkpoint")
    a("--demo", action="store_true", help="the built-in demo: synthetic Market-shaped data "
      "(generated once), 20%% random noise, small network, minutes on a CPU")


# The built-in demo: a small synthetic Market-shaped dataset, a small network from scratch.
DEMO_DEFAULTS = dict(data_dir="./demo_data", arch="resnet18", pretrained="none",
                     img_size=[64, 32], noise_ratio=0.2, epochs=24, milestones=[17, 21],
                     stage1_epochs=17, eval_every=6, workers=2)


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """Parse; with --demo, the demo's values replace the defaults (explicit flags still win)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--demo" in argv:
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in DEMO_DEFAULTS.items() if k in known})
    args = parser.parse_args(argv)
    if not 0 <= args.noise_ratio < 1:
        raise UserError(f"--noise_ratio {args.noise_ratio}: must be in [0, 1)")
    if args.epochs < 1 or args.batchsize < 2 or args.eval_every < 1:
        raise UserError("--epochs and --eval_every must be >= 1 and --batchsize >= 2")
    return args


def run_name(args: argparse.Namespace) -> str:
    """e.g. market_core_random0.2_lr0.01_seed1 (no epoch count: --resume can extend a run)."""
    noise = "clean" if args.noise_ratio == 0 else (
        f"{'pattern' if args.pattern else 'random'}{args.noise_ratio:g}")
    arch = "" if args.arch == "resnet50" else f"_{args.arch}"
    return f"{args.dataset}_{args.method}_{noise}_lr{args.lr:g}_seed{args.seed}{arch}"


# --------------------------------------------------------------------------------------------
# Setup

def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        if args.device == "auto":
            print("note: no CUDA device found; running on the CPU (slow for ResNet-50)")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA device; use --device cpu")
    return torch.device(f"cuda:{args.gpu}" if args.gpu is not None else "cuda")


def prepare_demo_data(data_dir: Path, workers: int) -> None:
    """Generate (once) the synthetic download and prepare it exactly as a real one."""
    from datasets.market1501 import DOWNLOAD_FOLDER
    from datasets.synthetic import make_preset
    from prepare_market import prepare
    ready = data_dir / ".demo_ready"
    if ready.is_file():
        return
    download = data_dir / DOWNLOAD_FOLDER
    if not download.is_dir():
        print(f"demo: writing a synthetic Market-1501-shaped download to {download} (once)")
        make_preset(data_dir, "demo", workers=max(1, workers), progress=True)
    prepare(download, data_dir / "market")  # completes an interrupted earlier attempt
    ready.touch()


@dataclass
class RunData:
    train: CachedBatches | LoaderBatches       # augmented, shuffled: what the networks learn on
    train_plain: CachedBatches | LoaderBatches  # the same images in order, not augmented
    true_labels: np.ndarray
    num_classes: int
    query: EvalSet
    gallery: EvalSet


def load_data(args: argparse.Namespace, device: torch.device) -> RunData:
    """Read the splits and build their batch pipelines (cached on the device where it fits)."""
    data_dir = Path(args.data_dir)
    train = load_split(data_dir, args.dataset, args.train_split)
    query = load_split(data_dir, args.dataset, "query")
    gallery = load_split(data_dir, args.dataset, "gallery")
    if args.eval_protocol == "standard":  # junk never counts: drop it before extraction
        gallery = gallery.subset(np.flatnonzero(gallery.pids != JUNK_PID))

    crop = tuple(args.img_size)
    test_bytes = (len(query) + len(gallery)) * crop[0] * crop[1] * 3
    use_cache = args.data_path == "cache" or (
        args.data_path == "auto" and cache_fits(len(train), resize_hw(crop), device, test_bytes))
    if args.data_path == "auto" and not use_cache:
        print("note: the image cache does not fit in memory; using the PIL/DataLoader path")

    def cached(dataset: ReIDFolder, size: tuple[int, int]) -> torch.Tensor:
        images = decoded_split(dataset, size, default_cache_dir(dataset), args.workers)
        return torch.from_numpy(images).to(device)

    def test_set(dataset: ReIDFolder) -> EvalSet:
        pids, camids = scoring_identities(dataset.pids, dataset.camids, dataset.classes,
                                       dataset.targets, [p.name for p in dataset.paths],
                                       args.eval_protocol)
        batches = (CachedBatches(cached(dataset, crop), 4 * args.batchsize) if use_cache else
                   LoaderBatches(dataset, eval_transform(crop), 4 * args.batchsize, False,
                                 args.workers, device))
        return EvalSet(batches, pids, camids)

    if use_cache:  # one copy of the training images serves both views
        images = cached(train, resize_hw(crop))
        train_batches = CachedBatches(images, args.batchsize, crop, augment=True)
        train_plain = CachedBatches(images, 4 * args.batchsize, crop)
    else:
        train_batches = LoaderBatches(train, train_transform(crop), args.batchsize, True,
                                      args.workers, device)
        train_plain = LoaderBatches(train, centre_transform(crop),
                                    4 * args.batchsize, False, args.workers, device)
    return RunData(train_batches, train_plain, train.targets.astype(np.int64),
                   train.num_classes, test_set(query), test_set(gallery))


def call_model(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits (the ``forward`` that ``eval_outputs`` runs for label predictions)."""
    return model(images)


def inject_noise(args: argparse.Namespace, data: RunData, device: torch.device):
    """(noisy labels, clean mask): random noise, or patterned from a clean model's confusions."""
    if not args.pattern:
        return random_noise(data.true_labels, args.noise_ratio, data.num_classes, args.seed)
    if args.pattern_model is None or not Path(args.pattern_model).is_file():
        clean = argparse.Namespace(**{**vars(args), "method": "baseline", "noise_ratio": 0.0,
                                      "pattern": False})
        raise UserError(
            f"--pattern needs --pattern_model, a baseline checkpoint trained on clean labels "
            f"(got: {args.pattern_model or 'none'}); train one with: python train_self.py "
            f"--method baseline --noise_ratio 0 --dataset {args.dataset} --data_dir "
            f"{args.data_dir} --output_dir {args.output_dir}   and then pass --pattern_model "
            f"{Path(args.output_dir) / run_name(clean) / 'last.pt'}")
    state = read_checkpoint(Path(args.pattern_model), "--pattern_model")
    clean_args = state["args"]
    if state["num_classes"] != data.num_classes:
        raise UserError(f"--pattern_model {args.pattern_model}: trained on "
                        f"{state['num_classes']} classes but this training split has "
                        f"{data.num_classes}; train it on the same dataset and split")
    clean_model = build_model(clean_args["arch"], data.num_classes, "none",
                              clean_args["head_act"], clean_args["dropout"])
    clean_model.load_state_dict(state["networks"][0])
    logits = eval_outputs(clean_model.to(device), data.train_plain, call_model, device,
                          desc="clean model's predictions")
    second = second_labels_from_logits(logits.cpu().numpy(), data.true_labels)
    return pattern_noise(data.true_labels, args.noise_ratio, second, args.seed)


# --------------------------------------------------------------------------------------------
# Networks and each method's loss

@dataclass
class Peer:
    """One network with its optimiser and its SELF weight lambda."""
    net: torch.nn.Module          # the ReIDNet (state dict, pool5)
    model: torch.nn.Module        # what the loop calls: ``net`` or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    lam: float = 0.0


def build_peers(args: argparse.Namespace, count: int, num_classes: int,
                device: torch.device, channels_last: bool) -> list[Peer]:
    peers = []
    for k in range(count):
        torch.manual_seed(args.seed * 1000 + k)  # each peer gets its own head initialisation
        net = build_model(args.arch, num_classes, args.pretrained, args.head_act, args.dropout)
        net = net.to(device, memory_format=torch.channels_last if channels_last
                     else torch.preserve_format)
        fast = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.SGD(net.param_groups(args.lr), lr=args.lr,
                                    momentum=args.momentum, nesterov=True,
                                    weight_decay=args.weight_decay, **fast)
        peers.append(Peer(net, torch.compile(net) if args.compile else net, optimizer))
    return peers


def lr_at(args: argparse.Namespace, epoch: int) -> float:
    """Step schedule: ``--lr`` times 0.1 for every milestone reached."""
    return args.lr * 0.1 ** sum(epoch >= m for m in args.milestones)


def in_self_stage(args: argparse.Namespace, method: str, epoch: int) -> bool:
    """CORE trains each peer with SELF for epochs <= --stage1_epochs (as released), then
    co-refines; SELF always uses its own loss."""
    return method == "self" or (method == "core" and epoch <= args.stage1_epochs)


def method_losses(args: argparse.Namespace, method: str, epoch: int,
                  logits: list[torch.Tensor], labels: torch.Tensor,
                  lams: list[float]) -> list[torch.Tensor]:
    """The loss of each network on one batch."""
    if method == "baseline":
        return [losses.cross_entropy_loss(out, labels) for out in logits]
    if in_self_stage(args, method, epoch):
        return [losses.self_refining_loss(out, labels, lam) for out, lam in zip(logits, lams)]
    first, second = logits
    return [losses.co_refining_loss(first, second, args.kl_weight, args.selective),
            losses.co_refining_loss(second, first, args.kl_weight, args.selective)]


# --------------------------------------------------------------------------------------------
# One epoch

def train_one_epoch(args: argparse.Namespace, method: str, epoch: int, peers: list[Peer],
                    data: RunData, noisy: torch.Tensor, amp: bool,
                    channels_last: bool) -> tuple[list[float], list[float], int]:
    """Train every peer on the same batches; returns (mean loss, train accuracy against the
    annotated labels) per network and the number of images seen. Statistics accumulate on the
    device and are read once at the end (no per-step host sync)."""
    for p in peers:
        p.model.train()
    device = noisy.device
    seed = epoch_seed(args.seed, epoch)
    torch.manual_seed(seed)  # dropout; the batches draw from the same seed
    loss_sum = torch.zeros(len(peers), device=device)
    correct = torch.zeros(len(peers), device=device, dtype=torch.long)
    seen, start = 0, time.time()
    bar = tqdm(data.train.batches(seed), total=len(data.train), leave=False, disable=None,
               desc=f"epoch {epoch}", unit="batch")
    for step, (images, index) in enumerate(bar):
        if len(index) < 2:  # BatchNorm cannot train on a single sample
            continue
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = noisy[index]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = [p.model(images) for p in peers]
        batch_losses = method_losses(args, method, epoch, logits, labels, [p.lam for p in peers])
        for p in peers:
            p.optimizer.zero_grad(set_to_none=True)
        torch.stack(batch_losses).sum().backward()  # peers are detached from each other
        for p in peers:
            p.optimizer.step()
        with torch.no_grad():
            preds = torch.stack([out.argmax(dim=1) for out in logits])
            loss_sum += torch.stack([loss.detach() for loss in batch_losses]) * len(index)
            correct += (preds == labels).sum(dim=1)
        seen += len(index)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum[0].item() / seen:.3f}",
                            acc=f"{correct[0].item() / seen:.3f}",
                            img_s=f"{seen / (time.time() - start):.0f}")
    bar.close()
    return (loss_sum / seen).tolist(), (correct.float() / seen).tolist(), seen


def label_diagnostics(refined: np.ndarray, true: np.ndarray, noisy: np.ndarray,
                      is_clean: np.ndarray) -> dict[str, Optional[float]]:
    """How good a network's refined labels are, which we can tell because we injected the noise.

    ``refined`` is the network's prediction (eval mode, no augmentation) for each training
    sample, after the epoch.
    label_precision: refined label == true label, over all samples; label_precision_clean: the
    same over originally clean samples; noisy_corrected: over originally noisy samples (the
    fraction of wrong labels the network has corrected); noisy_memorized: originally noisy
    samples whose refined label is still the wrong annotated one.
    """
    right = refined == true
    noisy_mask = ~is_clean
    mean_or_none = lambda x: float(x.mean()) if x.size else None  # noqa: E731
    return {"label_precision": float(right.mean()),
            "label_precision_clean": mean_or_none(right[is_clean]),
            "noisy_corrected": mean_or_none(right[noisy_mask]),
            "noisy_memorized": mean_or_none((refined == noisy)[noisy_mask])}


# --------------------------------------------------------------------------------------------
# Run folder, checkpoints, resume

MUST_MATCH_ON_RESUME = ("dataset", "train_split", "noise_ratio", "pattern", "seed", "arch",
                        "img_size", "head_act", "dropout")


def resolve_run(args: argparse.Namespace, name: str) -> tuple[Path, Optional[Path]]:
    """(run folder, checkpoint to resume from). A new run never overwrites an earlier one: if
    the name is taken, it gets a suffix (-2, -3, ...); --resume auto takes the latest."""
    if args.resume not in (None, "auto"):
        ckpt = Path(args.resume)
        if not ckpt.is_file():
            raise UserError(f"--resume {ckpt}: no such checkpoint; use --resume auto to "
                            "continue the run folder's last checkpoint")
        return ckpt.parent, ckpt
    base = Path(args.output_dir) / name
    taken = []
    for i in range(1, 10_000):
        folder = base if i == 1 else base.with_name(f"{name}-{i}")
        if not (folder / "last.pt").is_file():
            break
        taken.append(folder)
    if args.resume == "auto":
        if taken:
            return taken[-1], taken[-1] / "last.pt"
        print(f"note: no checkpoint to resume in {base}; starting a new run")
    return folder, None


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Put back the generators saved with a checkpoint (every epoch also reseeds its own)."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def read_checkpoint(path: Path, flag: str) -> dict:
    """A checkpoint written by this project, or a UserError naming ``flag``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"{flag} {path}: cannot read the checkpoint ({err})") from None
    if not isinstance(state, dict) or "networks" not in state:
        raise UserError(f"{flag} {path}: not a checkpoint of train_self.py / train_core.py")
    return state


def load_checkpoint(path: Path, args: argparse.Namespace, method: str,
                    num_classes: int) -> dict:
    """The checkpoint to resume, checked against this command's settings."""
    state = read_checkpoint(path, "--resume")
    if state["method"] != method or state["num_classes"] != num_classes:
        raise UserError(f"--resume {path}: a {state['method']} run on {state['num_classes']} "
                        f"classes cannot continue as {method} on {num_classes}")
    for key in MUST_MATCH_ON_RESUME:
        if state["args"][key] != getattr(args, key):
            raise UserError(f"--resume {path}: the run used --{key} {state['args'][key]}, this "
                            f"command says {getattr(args, key)}; use the same value or start a "
                            "new run")
    return state


# --------------------------------------------------------------------------------------------
# The run

def train(args: argparse.Namespace, method: str) -> dict:
    """Train, test and save a whole run; returns metrics.json's content."""
    assert method in METHODS
    args.method = method
    count = 2 if method == "core" else 1
    device = pick_device(args)
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    channels_last = device.type == "cuda"
    if args.demo:
        prepare_demo_data(Path(args.data_dir), args.workers)
    run_dir, ckpt = resolve_run(args, args.run_name or run_name(args))
    data = load_data(args, device)

    state = load_checkpoint(ckpt, args, method, data.num_classes) if ckpt else None
    if state is not None:
        noisy, is_clean = state["noisy_labels"], state["is_clean"]
    else:
        noisy, is_clean = inject_noise(args, data, device)
    noise_type = "pattern" if args.pattern else "random"
    save_noise(run_dir / "noisy_labels.npz", data.true_labels, noisy, is_clean,
               {"noise_type": noise_type, "noise_ratio": args.noise_ratio, "seed": args.seed})
    injected_precision = float((noisy == data.true_labels).mean())

    peers = build_peers(args, count, data.num_classes, device, channels_last)
    start_epoch = 0
    if state is not None:
        for p, net_state, opt_state, lam in zip(peers, state["networks"], state["optimizers"],
                                                state["lambdas"]):
            p.net.load_state_dict(net_state)
            p.optimizer.load_state_dict(opt_state)
            p.lam = lam
        restore_rng_states(state["rng"])
        start_epoch = state["epoch"] + 1
    noisy_dev = torch.as_tensor(noisy, device=device)

    meta = {"method": method, "dataset": args.dataset, "noise_type": noise_type,
            "noise_ratio": args.noise_ratio, "seed": args.seed, "args": vars(args),
            "realised_noise_rate": float(1 - is_clean.mean()),
            "injected_label_precision": injected_precision, "device": str(device),
            "run_dir": str(run_dir)}
    rec = RunRecorder(run_dir, meta, state["history"] if state else None)
    rec.log(f"run {run_dir}  ({'resuming after epoch ' + str(start_epoch - 1) if state else 'new'})")
    rec.log(f"{method} on {args.dataset}/{args.train_split}: {len(data.true_labels)} images, "
            f"{data.num_classes} identities; {noise_type} noise {args.noise_ratio:g} "
            f"(realised {meta['realised_noise_rate']:.4f}); query {len(data.query)}, "
            f"gallery {len(data.gallery)}; {args.arch} on {device}"
            f"{', bf16' if amp else ''}, {type(data.train).__name__}")

    if start_epoch >= args.epochs:
        rec.log(f"nothing to train: the run already has {start_epoch} epochs; pass a larger "
                "--epochs to extend it")
    for epoch in range(start_epoch, args.epochs):
        lr = lr_at(args, epoch)
        for p in peers:
            for group in p.optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
        stage = ("SELF" if in_self_stage(args, method, epoch) else
                 "co-refining" if method == "core" else "baseline")
        tic = time.time()
        mean_loss, train_acc, seen = train_one_epoch(args, method, epoch, peers, data,
                                                     noisy_dev, amp, channels_last)
        epoch_time = time.time() - tic
        if not all(math.isfinite(x) for x in mean_loss):
            raise UserError(f"training diverged at epoch {epoch} (loss {mean_loss}); lower --lr")
        networks = []
        for k, p in enumerate(peers):
            refined = eval_outputs(p.net, data.train_plain, call_model, device, amp,
                                   channels_last).argmax(dim=1)
            networks.append({"loss": mean_loss[k], "train_acc": train_acc[k], "lambda": p.lam,
                             **label_diagnostics(refined.cpu().numpy(), data.true_labels,
                                                 noisy, is_clean)})
            p.lam = losses.next_lambda(mean_loss[k])

        scores = {}
        if epoch % args.eval_every == 0 or epoch == args.epochs - 1:
            scores = get_test_acc(peers[0].net, data.query, data.gallery, device, amp,
                                  channels_last)
        record = {"epoch": epoch, "lr": lr, "stage": stage, **networks[0],
                  **{k: scores.get(k) for k in TEST_KEYS},
                  "epoch_time_s": epoch_time, "images_per_s": seen / epoch_time,
                  "networks": networks}
        rec.add_epoch(record)
        nets = "  ".join(f"net{k + 1} loss {n['loss']:.3f} acc {n['train_acc']:.3f} "
                         f"lambda {n['lambda']:.2f} label-prec {n['label_precision']:.3f}"
                         for k, n in enumerate(networks))
        rec.log(f"epoch {epoch}/{args.epochs - 1} [{stage}] lr {lr:.4g}  {nets}  "
                f"{epoch_time:.1f}s {seen / epoch_time:.0f} img/s")
        if scores:
            rec.log(f"  test epoch {epoch}: {format_scores(scores)}")

        checkpoint = {"epoch": epoch, "method": method, "args": vars(args),
                      "num_classes": data.num_classes,
                      "networks": [p.net.state_dict() for p in peers],
                      "optimizers": [p.optimizer.state_dict() for p in peers],
                      "lambdas": [p.lam for p in peers],
                      "noisy_labels": noisy, "is_clean": is_clean,
                      "true_labels": data.true_labels, "history": rec.history,
                      "rng": rng_states()}
        rec.save_checkpoint(checkpoint, "last.pt")
        best, _ = rec.summary()
        if scores and best["epoch"] == epoch:
            rec.save_checkpoint(checkpoint, "best.pt")

    best, final = rec.summary()
    last = rec.history[-1]
    rec.log(f"done: best (epoch {best['epoch']}, chosen on the test set, optimistic) "
            f"{format_scores(best)}")
    rec.log(f"      final (epoch {final['epoch']}) {format_scores(final)}")
    rec.log(f"      label precision: injected {injected_precision:.3f} -> refined "
            + ", ".join(f"net{k + 1} {n['label_precision']:.3f}"
                        for k, n in enumerate(last["networks"])))
    rec.log(f"      files: {run_dir} (metrics.json, curves.png, train.log, best.pt, last.pt, "
            f"tensorboard/: tensorboard --logdir {run_dir / 'tensorboard'})")
    rec.write_metrics()
    rec.close()
    return {**meta, "history": rec.history, "best": best, "final": final}
