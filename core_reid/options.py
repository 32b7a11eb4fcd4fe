"""The flags of train_self.py and train_core.py (both scripts' parsers live here, so the grid
can parse a run's command without importing a script), the built-in demo's values, and the checks
that run on them before any work starts. The shared flags are here; ``--method`` and each
method's own flags, checks and defaults come from the method registry (methods/).

The defaults are the released code's; every number the loop uses is one of these flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from datasets import DATASETS, get_dataset_info
from eval_utils import EVAL_PROTOCOLS
from methods import METHODS, method_flags, script_methods
from model import ARCHS
from core_reid.runs import run_name
from core_reid.utils import ArgumentParser, UserError, check_number, check_writable_folder

MIN_IMAGE_SIDE = 16  # ResNet halves the image five times; smaller inputs leave no feature map

NUMERICS = ("fast", "released")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags both scripts share."""
    a = parser.add_argument
    # data and noise
    a("--dataset", default="market", help="dataset: " + ", ".join(DATASETS) + " (cuhk03 = "
      "CUHK03-NP detected boxes, the paper's) or the name of your own, prepared with "
      "prepare_market.py --dataset custom --dst DATA_DIR/<name>; data is read from "
      "DATA_DIR/<name>/")
    a("--data_dir", default="../", help="folder holding the prepared dataset folder "
      "(prepare_market.py --dataset NAME --dst DATA_DIR/NAME)")
    a("--train_split", default="train", choices=["train", "train_all"],
      help="training split: 'train' (the released code's; one image per identity held out in "
      "val) or 'train_all'")
    a("--noise_ratio", type=float, default=0.2, help="fraction of each identity's training "
      "labels to corrupt, in [0, 1)")
    a("--noise_seed", type=int, default=1, help="seed of the label noise alone (the released "
      "code always uses 1), so runs with different --seed share the same noisy labels")
    a("--pattern", action="store_true", help="patterned noise: a corrupted sample takes the "
      "class a clean model confuses it with (needs --pattern_model); default: random noise")
    a("--pattern_model", default=None, help="checkpoint of a baseline trained on clean labels "
      "(train_self.py --method baseline --noise_ratio 0), used by --pattern")
    a("--pattern_view", default="flipped", choices=["flipped", "plain"],
      help="which view of a training image the clean model classifies for --pattern: "
      "'flipped' = the test transform of the mirrored image (the released code, through a "
      "reused loop variable); 'plain' = the test transform of the image itself")
    a("--labels", default=None, metavar="CSV", help="train on these labels instead of the "
      "dataset's annotations: a CSV in the manifest's form (path,pid,camid,split), one row per "
      "training image, e.g. an audit's refined_labels.csv (docs/audit.md); no noise is "
      "injected (--noise_ratio defaults to 0 with it)")
    a("--seed", type=int, default=1, help="seed of the initialisation, the batches and the "
      "augmentation (not of the noise: see --noise_seed)")
    # model
    a("--arch", default="resnet50", choices=sorted(ARCHS), help="backbone")
    a("--pretrained", default="imagenet", help="'imagenet' (torchvision weights, downloaded), "
      "'none' (from scratch), 'synthetic' (a stand-in for ImageNet: the backbone trained once "
      "with clean labels on other synthetic people, cached under "
      "DATA_DIR/synthetic_pretraining/) or the path of a local torchvision ResNet state dict")
    a("--head_act", default="leaky_relu", choices=["leaky_relu", "relu"],
      help="head activation: the released code's LeakyReLU(0.1), or the paper's ReLU")
    a("--dropout", type=float, default=0.5, help="dropout after the 512-d head, in [0, 1)")
    # optimisation
    a("--lr", type=float, default=0.01, help="backbone learning rate; the new head gets 10x")
    a("--batchsize", type=int, default=32, help="batch size (>= 2: BatchNorm)")
    a("--epochs", type=int, default=61, help="number of epochs (the released code runs "
      "epochs 0..60); with --resume, extends a finished run")
    a("--milestones", type=int, nargs="*", default=[20, 50],
      help="epochs at which the learning rate is multiplied by 0.1 (ascending, within the "
      "run; no value: a constant learning rate)")
    a("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum, in (0, 1)")
    a("--weight_decay", type=float, default=5e-4, help="SGD weight decay, >= 0")
    a("--img_size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"),
      help="training crop; images are resized to 9/8 of it first, test images to it")
    a("--train_transform", default="augment", choices=["augment", "test"],
      help="'augment': resize to 9/8, random crop, random flip (the paper's); 'test': the "
      "test transform, no crop or flip (what the released code's --pattern runs train with, "
      "because it switches the training set's transform and never switches it back)")
    # running
    a("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where to train")
    a("--gpu", type=int, default=None, help="CUDA device index to use (the released code's "
      "flag; default: the current CUDA device)")
    a("--workers", type=int, default=4, help="processes decoding images")
    a("--threads", type=int, default=None, metavar="N",
      help="CPU threads torch computes with (torch.set_num_threads), set before any work; "
      "default: torch's own (OMP_NUM_THREADS, else the cores). CPU results depend on it; "
      "recorded in metrics.json (numerics.threads)")
    a("--numerics", default="fast", choices=NUMERICS,
      help="'fast': bf16 autocast, TF32, channels_last and fused SGD on CUDA (each only where "
      "torch and the device support it) and the image cache; 'released': the released "
      "arithmetic, fp32 with TF32 off, default memory format, plain SGD, PIL/DataLoader")
    a("--data_path", default="auto", choices=["auto", "cache", "loader"],
      help="'cache': decode once, keep the split in device memory, augment on the device; "
      "'loader': PIL + DataLoader every epoch (released); 'auto': cache where it fits "
      "(loader with --numerics released)")
    a("--amp", default="auto", choices=["auto", "on", "off"],
      help="bf16 autocast ('auto': on with --numerics fast on a CUDA device that has bf16)")
    a("--channels_last", default="auto", choices=["auto", "on", "off"],
      help="channels_last memory format ('auto': on with --numerics fast on CUDA)")
    a("--compile", action="store_true", help="torch.compile the networks (not with "
      "--numerics released)")
    a("--matmul_convs", action="store_true",
      help="compute each convolution whose output is a single position (ResNet's last stage "
      "at 32x16 images) as one matrix product of the window it sees: the same function and "
      "gradients, other float rounding; about 1.8x faster training steps on a CPU at the "
      "demo grid's 32x16 (not with --numerics released)")
    a("--eval_every", type=int, default=2, help="test network 1 every N epochs (and at the end)")
    a("--diagnostics_every", type=int, default=1, metavar="N",
      help="the label diagnostics (label precision, noisy corrected and memorised: a forward "
      "pass over every training image per network) every N epochs, at every test and at the "
      "end; between them they are null in metrics.json. They never change the training")
    a("--eval_protocol", default="standard", choices=EVAL_PROTOCOLS,
      help="'standard' Market-1501 protocol, or 'released': the released code's mis-read "
      "cameras and junk (optimistic; for comparison only)")
    a("--rerank", action="store_true", help="test with k-reciprocal re-ranking (Zhong et al., "
      "CVPR 2017; k1=20, k2=6, lambda=0.3); default: the plain distances, as released")
    a("--output_dir", default="./res", help="runs are written to OUTPUT_DIR/<run name>/")
    a("--run_name", default=None, help="run folder name (default: from dataset, method, noise, "
      "noise seed, lr and seed)")
    a("--resume", nargs="?", const="auto", default=None,
      help="continue a run: 'auto' (or no value) = the last checkpoint in the run folder, or "
      "the path of a checkpoint (default: a new run)")
    a("--demo", action="store_true", help="the built-in demo: synthetic Market-shaped data "
      "(generated once), 20%% random noise, small network, minutes on a CPU")


def add_method_args(parser: argparse.ArgumentParser, script: str) -> None:
    """``--method`` (the methods ``script`` trains, from the registry) and their own flags: one
    group of flags per method that introduces some."""
    methods = script_methods(script)
    parser.add_argument("--method", default=methods[0].name, choices=[m.name for m in methods],
                        help="; ".join(f"'{m.name}': {m.summary}" for m in methods))
    added: set[type] = set()
    for method in methods:
        for k in method.flag_classes():
            if k not in added:
                added.add(k)
                k.add_args(parser.add_argument_group(f"{k.title} (--method {k.name})"))


def build_parser(script: str, description: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole parser of ``script`` (train_self.py or train_core.py): its own flags, then the
    shared ones."""
    parser = ArgumentParser(description=description)
    add_method_args(parser, script)
    add_common_args(parser)
    return parser


# The built-in demo: a small synthetic Market-shaped dataset, a small network from scratch (and
# the methods' own ``demo_defaults``).
DEMO_DEFAULTS = dict(data_dir="./demo_data", arch="resnet18", pretrained="none",
                     img_size=[64, 32], noise_ratio=0.2, epochs=24, milestones=[17, 21],
                     eval_every=6, workers=2)


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
               check: bool = True) -> argparse.Namespace:
    """Parse and (unless ``check`` is False) check; with --demo, the demo's values replace the
    defaults (explicit flags still win)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--demo" in argv:
        known = {a.dest for a in parser._actions}
        demo = {k: v for m in METHODS.values() for k, v in m.demo_defaults.items()}
        parser.set_defaults(**{k: v for k, v in {**DEMO_DEFAULTS, **demo}.items()
                               if k in known})
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    if args.labels and "--noise_ratio" not in given:  # given labels: nothing to inject (set
        args.noise_ratio = 0.0  # first: a method's defaults may follow it, e.g. --forget_rate)
    resolve_method_flags(args, given, "--demo" in argv)
    if check:
        check_args(args)
    return args


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The flags ``argv`` sets itself (not by default), as ``--name``; abbreviations and
    ``--flag=value`` count under their full name."""
    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions})
    parser.parse_args(argv, probe)
    return {f"--{dest}" for dest, value in vars(probe).items() if value is not unset}


def resolve_method_flags(args: argparse.Namespace, given: set[str], demo: bool) -> None:
    """Refuse the flags of another method (one line, exit 2); fill in the defaults that depend
    on the method (its ``defaults``, unless given or set by --demo, then its ``resolve_args``)."""
    method = METHODS[args.method]
    for flag, (owner, readers) in method_flags().items():  # in registry order
        if flag in given and method.name not in readers:
            raise UserError(f"{flag} is a {owner} flag; --method {method.name} does not read it: "
                            f"drop it, or train with --method {' or '.join(readers)}")
    for key, value in method.defaults.items():
        if f"--{key}" not in given and not (demo and key in DEMO_DEFAULTS):
            setattr(args, key, list(value) if isinstance(value, list) else value)
    method.resolve_args(args)


def check_args(args: argparse.Namespace) -> None:
    """One UserError line for the first flag that is out of range, contradicts another or names
    a path that cannot serve, before any work starts."""
    ranges = [
        ("--noise_ratio", args.noise_ratio, 0 <= args.noise_ratio < 1, "in [0, 1)"),
        ("--noise_seed", args.noise_seed, args.noise_seed >= 0, "an integer >= 0"),
        ("--seed", args.seed, args.seed >= 0, "an integer >= 0"),
        ("--lr", args.lr, args.lr > 0, "> 0 (the released default: 0.01)"),
        ("--momentum", args.momentum, 0 < args.momentum < 1,
         "in (0, 1): Nesterov SGD needs momentum > 0 (the released default: 0.9)"),
        ("--weight_decay", args.weight_decay, args.weight_decay >= 0, ">= 0 (released: 5e-4)"),
        ("--dropout", args.dropout, 0 <= args.dropout < 1, "in [0, 1) (released: 0.5)"),
        ("--batchsize", args.batchsize, args.batchsize >= 2,
         ">= 2 (BatchNorm cannot train on one image; released: 32)"),
        ("--epochs", args.epochs, args.epochs >= 1, ">= 1 (released: 61)"),
        ("--eval_every", args.eval_every, args.eval_every >= 1, ">= 1 (released: 2)"),
        ("--diagnostics_every", args.diagnostics_every, args.diagnostics_every >= 1,
         ">= 1 (default: 1, every epoch)"),
        ("--workers", args.workers, args.workers >= 0, ">= 0 (0 decodes in the main process)"),
    ]
    if args.threads is not None:
        ranges.append(("--threads", args.threads, args.threads >= 1,
                       ">= 1 (default: torch's own)"))
    for flag, value, ok, accepted in ranges:
        check_number(flag, value, ok, accepted)
    if getattr(args, "method", None) in METHODS:
        METHODS[args.method].check_args(args)
    height, width = args.img_size
    if min(height, width) < MIN_IMAGE_SIDE:
        raise UserError(f"--img_size {height} {width}: height and width must each be >= "
                        f"{MIN_IMAGE_SIDE} (released: 256 128)")
    milestones = " ".join(map(str, args.milestones))
    if list(args.milestones) != sorted(set(args.milestones)):
        raise UserError(f"--milestones {milestones}: must be strictly ascending (released: "
                        "20 50)")
    if args.milestones and not 1 <= args.milestones[0] <= args.milestones[-1] < args.epochs:
        raise UserError(f"--milestones {milestones}: must lie in 1..{args.epochs - 1}, within "
                        f"the run's --epochs {args.epochs} (give no value for a constant "
                        "learning rate)")
    if args.gpu is not None and (args.gpu < 0 or args.device == "cpu"):
        raise UserError(f"--gpu {args.gpu}: " + ("must be a CUDA device index >= 0"
                                                 if args.gpu < 0 else "contradicts --device cpu"))
    _check_paths(args)


def _check_paths(args: argparse.Namespace) -> None:
    if args.labels is not None:
        if not Path(args.labels).is_file():
            raise UserError(f"--labels {args.labels}: no such file; give a CSV of the training "
                            "images' labels, e.g. RUN/audit/refined_labels.csv from test.py "
                            "--audit")
        if args.noise_ratio != 0:
            raise UserError(f"--labels with --noise_ratio {args.noise_ratio:g}: the run trains "
                            "on the given labels as they are; drop --noise_ratio")
    if args.pattern and args.noise_ratio == 0:
        raise UserError("--pattern with --noise_ratio 0: patterned noise needs a ratio > 0")
    if args.pattern_model is not None and not args.pattern:
        raise UserError(f"--pattern_model {args.pattern_model} without --pattern: add --pattern "
                        "for patterned noise, or drop --pattern_model")
    if args.pattern and (args.pattern_model is None or not Path(args.pattern_model).is_file()):
        clean = argparse.Namespace(**{**vars(args), "method": "baseline", "noise_ratio": 0.0,
                                      "pattern": False})
        raise UserError(
            f"--pattern needs --pattern_model, a baseline checkpoint trained on clean labels "
            f"(got: {args.pattern_model or 'none'}: no such file); train one with: python "
            f"train_self.py --method baseline --noise_ratio 0 --dataset {args.dataset} "
            f"--data_dir {args.data_dir} --output_dir {args.output_dir}   and then pass "
            f"--pattern_model {Path(args.output_dir) / run_name(clean) / 'last.pt'}")
    if args.pretrained not in ("imagenet", "none", "synthetic") and \
            not Path(args.pretrained).is_file():
        raise UserError(f"--pretrained {args.pretrained}: no such file; give 'imagenet', 'none', "
                        "'synthetic' or the path of a torchvision ResNet state dict")
    if args.run_name is not None and (not args.run_name or Path(args.run_name).name !=
                                      args.run_name or args.run_name in (".", "..")):
        raise UserError(f"--run_name {args.run_name!r}: must be a folder name, without '/'")
    if args.resume not in (None, "auto"):
        if not Path(args.resume).is_file():
            raise UserError(f"--resume {args.resume}: no such checkpoint; use --resume auto to "
                            "continue the run folder's last checkpoint")
        if args.run_name is not None and args.run_name != Path(args.resume).parent.name:
            raise UserError(f"--run_name {args.run_name} contradicts --resume {args.resume} "
                            f"(that run's folder is {Path(args.resume).parent.name}); drop one")
    if not args.demo:
        check_data_dir(args)
    if args.demo and args.dataset != "market":
        raise UserError(f"--demo trains on synthetic Market-1501 data; drop --dataset "
                        f"{args.dataset}, or drop --demo and point --data_dir at a prepared "
                        f"{args.dataset}")
    if args.eval_protocol == "released" and args.dataset != "market":
        raise UserError(f"--eval_protocol released reproduces the released code's misreading "
                        f"of Market-1501 file names; it has no meaning for --dataset "
                        f"{args.dataset}: drop it")
    check_writable_folder("--output_dir", args.output_dir)


def check_data_dir(args: argparse.Namespace) -> None:
    """UserError unless ``--data_dir`` holds the prepared ``--dataset``."""
    folder = Path(args.data_dir) / get_dataset_info(args.dataset, args.data_dir).folder
    if not folder.is_dir():
        raise UserError(f"--data_dir {args.data_dir}: no {folder} folder; prepare the dataset "
                        f"with: python prepare_market.py --dataset {args.dataset} --src "
                        f"<download> --dst {folder}")


def saved_args(saved: dict) -> argparse.Namespace:
    """A saved run's flags, with today's defaults for the flags added after it was written."""
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([])), **saved})
