"""Where a new run's backbone starts: ImageNet weights, scratch, a local file, or the synthetic
pretraining, a stand-in for ImageNet where its weights cannot be downloaded.

The paper fine-tunes an ImageNet-pretrained backbone: its early predictions are better than
the noisy annotations, and the large learning rate keeps them from memorising the wrong ones.
``--pretrained synthetic`` reproduces that regime on our own data: the chosen backbone is
trained once, with clean labels (the baseline through ``engine.train``), on a separate
synthetic download of other people (another generator seed, so no identity and no image is
shared with the run's data), and cached under ``DATA_DIR/synthetic_pretraining/``:

    data_<generator hash>/     the separate download, prepared (shared by every backbone)
    runs/<key>/                the pretraining run while it trains (removed once cached)
    <key>.pt                   {"state_dict": backbone, "record": where it came from (JSON)}

``<key>`` = architecture, image size and a hash of the generator and training settings. The
cache is written atomically; a damaged one is made again. Every later run reuses it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from datasets.synthetic import PRESETS, SyntheticSpec
from model import backbone_weights, fit_backbone
from core_reid.options import saved_args
from core_reid.run_data import prepare_synthetic_data
from core_reid.runs import network_from_checkpoint, read_checkpoint
from core_reid.utils import atomic_write, check_writable_folder, first_line

SYNTHETIC = "synthetic"
CACHE_FOLDER = "synthetic_pretraining"
# engine.train: (args, method name) -> metrics.json's content
Trainer = Callable[[argparse.Namespace, str], dict]
# The settings of the run's computation that the pretraining run shares.
SHARED_FLAGS = ("device", "gpu", "workers", "numerics", "data_path", "amp", "channels_last",
                "compile")


@dataclass(frozen=True)
class PretrainingSpec:
    """Who the other people are and how the backbone learns them. The generator seed decides
    the people, so it must differ from the seed of any run's data (every preset's is 0)."""
    identities: int = 200
    images_per_id: float = 16.0
    test_identities: int = 20       # the pretraining run's own query and gallery
    generator_seed: int = 2022
    epochs: int = 12
    milestones: tuple[int, ...] = (9,)
    lr: float = 0.01
    batchsize: int = 32
    seed: int = 1                   # initialisation, batches, augmentation

    def generator(self) -> SyntheticSpec:
        """The separate download's full generator settings (the demo preset's knobs)."""
        return dataclasses.replace(PRESETS["demo"], num_train_ids=self.identities,
                                   num_test_ids=self.test_identities,
                                   images_per_id=self.images_per_id, seed=self.generator_seed)


DEFAULT_SPEC = PretrainingSpec()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(data_dir: Path, arch: str, img_size: list[int],
               spec: PretrainingSpec) -> Path:
    """The cached backbone of ``arch`` at ``img_size`` pretrained as ``spec`` says."""
    key = _digest([arch, list(img_size), dataclasses.asdict(spec),
                   dataclasses.asdict(spec.generator())])
    return data_dir / CACHE_FOLDER / f"{arch}_{img_size[0]}x{img_size[1]}_{key}.pt"


def pretrained_record(args: argparse.Namespace) -> dict:
    """metrics.json's ``pretrained`` block: where the backbone's starting weights came from."""
    if args.pretrained == SYNTHETIC:
        return synthetic_record(args, DEFAULT_SPEC)
    if args.pretrained in ("imagenet", "none"):
        return {"source": args.pretrained}
    return {"source": "file", "path": str(Path(args.pretrained).resolve())}


def synthetic_record(args: argparse.Namespace, spec: PretrainingSpec) -> dict:
    """The synthetic pretraining of ``args.arch`` at ``args.img_size``: its cache file under
    ``args.data_dir``, the separate download's generator (its seed decides the people) and
    the training settings."""
    record = {"source": SYNTHETIC,
              "cache": str(cache_path(Path(args.data_dir), args.arch, args.img_size,
                                      spec).resolve()),
              "arch": args.arch, "img_size": list(args.img_size),
              "generator": dataclasses.asdict(spec.generator()),
              **{k: v for k, v in dataclasses.asdict(spec).items()
                 if k in ("epochs", "milestones", "lr", "batchsize", "seed")}}
    return json.loads(json.dumps(record))  # as the cache reads it back: lists, not tuples


def describe_record(record: dict) -> str:
    """The log line of ``pretrained_record``'s block."""
    if record["source"] == SYNTHETIC:
        made = ("" if "reused" not in record else " (cached earlier)" if record["reused"]
                else f" (made now in {record['made_in_s']:.0f}s)")
        return (f"backbone: synthetic pretraining, {record['cache']}{made}; generator seed "
                f"{record['generator']['seed']}, {record['generator']['num_train_ids']} "
                f"identities, {record['epochs']} epochs")
    return "backbone: " + {"imagenet": "ImageNet weights (torchvision)",
                           "none": "from scratch"}.get(record["source"], record.get("path", ""))


def initial_backbone(args: argparse.Namespace, train: Trainer,
                     spec: Optional[PretrainingSpec] = None) -> tuple[Optional[dict], dict]:
    """(the backbone state dict a new run starts from, None from scratch; ``pretrained_record``'s
    block, with the pretraining's own results for ``--pretrained synthetic``)."""
    if args.pretrained == SYNTHETIC:
        return synthetic_backbone(args, train, spec)
    return backbone_weights(args.arch, args.pretrained), pretrained_record(args)


def synthetic_backbone(args: argparse.Namespace, train: Trainer,
                       spec: Optional[PretrainingSpec] = None) -> tuple[dict, dict]:
    """The cached synthetic pretraining of ``args.arch`` at ``args.img_size`` under
    ``args.data_dir``, made first if missing or damaged; ``spec`` replaces the default
    (tests: a tiny one)."""
    spec = spec or DEFAULT_SPEC
    record = synthetic_record(args, spec)
    path = Path(record["cache"])
    started = time.time()
    cached = _read_cache(path, args.arch)
    state, made = cached if cached is not None else _pretrain(args, train, spec, path, record)
    return state, {**made, "cache": str(path), "reused": cached is not None,
                   "seconds": round(time.time() - started, 1)}


def _read_cache(path: Path, arch: str) -> Optional[tuple[dict, dict]]:
    """(backbone, record) of a readable cache file; None when it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return fit_backbone(arch, saved["state_dict"], str(path)), json.loads(saved["record"])
    except Exception as err:  # truncated, not ours, another arch (UserError): re-made
        print(f"note: the cached pretrained backbone {path} is damaged ({first_line(err)}); "
              "pretraining again")
        return None


def _pretrain(args: argparse.Namespace, train: Trainer, spec: PretrainingSpec, path: Path,
              record: dict) -> tuple[dict, dict]:
    """Generate the separate download (once), train the baseline on its clean labels, and
    cache the backbone of its last epoch."""
    root = path.parent
    check_writable_folder("--data_dir", root, args.data_dir)  # the cache's folder
    generator = spec.generator()
    data_dir = root / f"data_{_digest(dataclasses.asdict(generator))}"
    print(f"pretraining the {args.arch} backbone at {args.img_size[0]}x{args.img_size[1]} on "
          f"{spec.identities} synthetic identities (generator seed {spec.generator_seed}, "
          f"clean labels, {spec.epochs} epochs), once; cached as {path}", flush=True)
    started = time.time()
    prepare_synthetic_data(data_dir, args.workers, **dataclasses.asdict(generator))
    run_dir = root / "runs" / path.stem
    inner = saved_args({
        **{flag: getattr(args, flag) for flag in SHARED_FLAGS},
        "dataset": "market", "data_dir": str(data_dir), "train_split": "train_all",
        "noise_ratio": 0.0, "seed": spec.seed, "arch": args.arch, "pretrained": "none",
        "img_size": list(args.img_size), "lr": spec.lr, "batchsize": spec.batchsize,
        "epochs": spec.epochs, "milestones": list(spec.milestones), "eval_every": spec.epochs,
        "output_dir": str(run_dir.parent), "run_name": run_dir.name,
        "resume": "auto" if (run_dir / "last.pt").is_file() else None})
    metrics = train(inner, "baseline")
    state = read_checkpoint(run_dir / "last.pt", "pretraining")
    backbone = network_from_checkpoint(state).backbone.state_dict()
    last = metrics["history"][-1]
    made = {**record, "made_on": time.strftime("%Y-%m-%d %H:%M"),
            "made_in_s": round(time.time() - started, 1),
            "train_images": len(state["true_labels"]), "train_acc": last["train_acc"],
            "test_rank1": metrics["final"]["rank1"], "test_mAP": metrics["final"]["mAP"],
            "torch": torch.__version__}
    atomic_write(path, lambda tmp: torch.save({"state_dict": backbone,
                                               "record": json.dumps(made)}, tmp))
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # other pretrainings may still be training there
        run_dir.parent.rmdir()
    print(f"pretrained in {made['made_in_s']:.0f}s: training accuracy {last['train_acc']:.3f}, "
          f"rank-1 {100 * made['test_rank1']:.1f} / mAP {100 * made['test_mAP']:.1f} on "
          f"{spec.test_identities} other held-out identities", flush=True)
    return backbone, made
