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

``<key>`` = architecture, image size and a hash of everything that decides the cached bits: the
generator and training settings, the code that makes it (``PRETRAINING_SOURCES``), the torch and
torchvision versions, the CPU threads, the device kind and the arithmetic. Any of them changed,
the name changes and the pretraining is made again (with a note saying what differs from the
last one made), never silently reused. The cache is written atomically; a damaged one is made
again. A run records the file's sha256 in its ``pretrained`` block: two runs with the same
checksum started from the same file (the file keeps its path and date too, so the same weights
made again elsewhere have another checksum; the name and ``computation`` say whether they
should be the same).
"""
from __future__ import annotations

import argparse
import ast
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
import torchvision

from datasets.synthetic import PRESETS, SyntheticSpec
from model import backbone_weights, fit_backbone
from core_reid.numerics import choose_numerics
from core_reid.options import saved_args
from core_reid.run_data import prepare_synthetic_data
from core_reid.runs import network_from_checkpoint, read_checkpoint
from core_reid.utils import atomic_write, check_writable_folder, first_line

SYNTHETIC = "synthetic"
CACHE_FOLDER = "synthetic_pretraining"
# engine.train: (args, method name) -> metrics.json's content
Trainer = Callable[[argparse.Namespace, str], dict]
# The settings of the run's computation that the pretraining run shares.
SHARED_FLAGS = ("device", "gpu", "workers", "threads", "numerics", "data_path", "amp",
                "channels_last", "compile", "matmul_convs")
REPO = Path(__file__).resolve().parents[1]
# The code the pretraining run executes that decides the cached backbone or the record saved
# with it (paths from the repository root). Left out: what only logs, draws, locks or parses
# flags' words (recorder, pictures, utils), and what it never runs (the other datasets, re-
# ranking, the grid, test.py's re-scoring).
PRETRAINING_SOURCES = (
    # the separate download and its prepared splits
    "datasets/synthetic.py", "datasets/synthetic_shapes.py", "datasets/prepare.py",
    "datasets/download.py", "datasets/layout.py", "datasets/market1501.py", "datasets/__init__.py",
    # reading, augmenting and batching it; its (zero) label noise
    "datasets/folder.py", "datasets/pipeline.py", "datasets/noise.py", "core_reid/run_data.py",
    # the network, the loss, the loop, its checkpoints (an interrupted pretraining resumes), the
    # inner run's flags and defaults, and the spec
    "model.py", "losses.py", "methods/__init__.py", "methods/base.py", "methods/baseline.py",
    "core_reid/engine.py", "core_reid/run_state.py", "core_reid/runs.py",
    "core_reid/fast_path.py",
    "core_reid/numerics.py", "core_reid/options.py", "core_reid/pretraining.py",
    # the test scores the record keeps
    "eval_utils.py", "eval_lib/__init__.py", "eval_lib/_eval_cy.pyx",
)


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


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                node.body = node.body[1:]
    return tree


def code_digest() -> str:
    """A hash of the code of ``PRETRAINING_SOURCES``: Python files as their syntax tree without
    docstrings (comments, docstrings and layout do not count, so editing words alone does not
    make the pretraining again), other files as they are."""
    digest = hashlib.sha256()
    for name in PRETRAINING_SOURCES:
        path = REPO / name
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            text = ast.dump(_without_docstrings(ast.parse(text, str(path))))
        digest.update(f"{name}\0{text}\0".encode())
    return digest.hexdigest()[:12]


def computation(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the pretraining's bits besides its spec: the code, the torch and
    torchvision versions, the CPU threads (``--threads``, else torch's default here), the
    device kind and the arithmetic ``--numerics`` and its switches choose there."""
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    numerics = dataclasses.asdict(choose_numerics(args, torch.device(device)))
    return {"code": code_digest(), "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "threads": getattr(args, "threads", None) or torch.get_num_threads(),
            "device": device, "numerics": {k: v for k, v in numerics.items() if k != "mode"}}


def cache_path(data_dir: Path, arch: str, img_size: list[int], spec: PretrainingSpec,
               made_by: dict[str, Any]) -> Path:
    """The cached backbone of ``arch`` at ``img_size`` pretrained as ``spec`` says, by the
    ``computation`` ``made_by``."""
    key = _digest([arch, list(img_size), dataclasses.asdict(spec),
                   dataclasses.asdict(spec.generator()), made_by])
    return data_dir / CACHE_FOLDER / f"{arch}_{img_size[0]}x{img_size[1]}_{key}.pt"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_record(args: argparse.Namespace) -> dict:
    """metrics.json's ``pretrained`` block: where the backbone's starting weights came from."""
    if args.pretrained == SYNTHETIC:
        return synthetic_record(args, DEFAULT_SPEC)
    if args.pretrained in ("imagenet", "none"):
        return {"source": args.pretrained}
    return {"source": "file", "path": str(Path(args.pretrained).resolve())}


def synthetic_record(args: argparse.Namespace, spec: PretrainingSpec) -> dict:
    """The synthetic pretraining of ``args.arch`` at ``args.img_size``: its cache file under
    ``args.data_dir``, the separate download's generator (its seed decides the people), the
    training settings and the ``computation`` that makes it."""
    made_by = computation(args)
    record = {"source": SYNTHETIC,
              "cache": str(cache_path(Path(args.data_dir), args.arch, args.img_size, spec,
                                      made_by).resolve()),
              "arch": args.arch, "img_size": list(args.img_size),
              "generator": dataclasses.asdict(spec.generator()),
              **{k: v for k, v in dataclasses.asdict(spec).items()
                 if k in ("epochs", "milestones", "lr", "batchsize", "seed")},
              "computation": made_by}
    return json.loads(json.dumps(record))  # as the cache reads it back: lists, not tuples


def resumed_record(args: argparse.Namespace, run_dir: Path) -> dict:
    """A resumed run's ``pretrained`` block: the one its metrics.json recorded when it started
    (where its backbone came from), else what its flags say today."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())["pretrained"]
    except (OSError, ValueError, KeyError, TypeError):
        return pretrained_record(args)


def describe_record(record: dict) -> str:
    """The log line of ``pretrained_record``'s block."""
    if record["source"] == SYNTHETIC:
        made = ("" if "reused" not in record else " (cached earlier)" if record["reused"]
                else f" (made now in {record['made_in_s']:.0f}s)")
        by = record.get("computation", {})
        return (f"backbone: synthetic pretraining, {record['cache']}{made}"
                + (f", sha256 {record['sha256'][:16]}" if "sha256" in record else "")
                + f"; generator seed {record['generator']['seed']}, "
                f"{record['generator']['num_train_ids']} identities, {record['epochs']} epochs"
                + (f"; code {by['code']}, torch {by['torch']}, {by['threads']} CPU threads"
                   if by else ""))
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
    if cached is None:
        _say_why_not_reused(path, record)
    state, made = cached if cached is not None else _pretrain(args, train, spec, path, record)
    return state, {**made, "cache": str(path), "reused": cached is not None,
                   "sha256": file_sha256(path), "seconds": round(time.time() - started, 1)}


def _say_why_not_reused(path: Path, record: dict) -> None:
    """Print what differs between the pretraining about to be made and the latest one made
    for the same architecture and image size, if any (e.g. the code or the threads)."""
    others = sorted((p for p in path.parent.glob(f"{path.name.rsplit('_', 1)[0]}_*.pt")
                     if p != path), key=lambda p: p.stat().st_mtime, reverse=True)
    for other in others:
        try:
            then = json.loads(torch.load(other, map_location="cpu", weights_only=True,
                                         mmap=True)["record"])
        except Exception:  # damaged or not ours: nothing to compare with
            continue
        changes = _changes(then, {k: v for k, v in record.items() if k != "cache"})
        print(f"note: not reusing {other.name}: it was made with "
              f"{'; '.join(changes) or 'the same settings (another key scheme)'}", flush=True)
        return


def _changes(then: dict, now: dict, prefix: str = "") -> list[str]:
    """'name old (now new)' for each setting in ``now`` that ``then`` had otherwise."""
    changes = []
    for key, value in now.items():
        old = then.get(key, "(not recorded)")
        if isinstance(value, dict):
            changes += _changes(old if isinstance(old, dict) else {}, value, f"{prefix}{key}.")
        elif old != value:
            changes.append(f"{prefix}{key} {old} (now {value})")
    return changes


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
        "diagnostics_every": spec.epochs,
        "output_dir": str(run_dir.parent), "run_name": run_dir.name,
        "resume": "auto" if (run_dir / "last.pt").is_file() else None})
    metrics = train(inner, "baseline")
    state = read_checkpoint(run_dir / "last.pt", "pretraining")
    backbone = network_from_checkpoint(state).backbone.state_dict()
    last = metrics["history"][-1]
    made = {**record, "made_on": time.strftime("%Y-%m-%d %H:%M"),
            "made_in_s": round(time.time() - started, 1),
            "train_images": len(state["true_labels"]), "train_acc": last["train_acc"],
            "test_rank1": metrics["final"]["rank1"], "test_mAP": metrics["final"]["mAP"]}
    atomic_write(path, lambda tmp: torch.save({"state_dict": backbone,
                                               "record": json.dumps(made)}, tmp))
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # other pretrainings may still be training there
        run_dir.parent.rmdir()
    print(f"pretrained in {made['made_in_s']:.0f}s: training accuracy {last['train_acc']:.3f}, "
          f"rank-1 {100 * made['test_rank1']:.1f} / mAP {100 * made['test_mAP']:.1f} on "
          f"{spec.test_identities} other held-out identities", flush=True)
    return backbone, made
