"""Run folders and checkpoints: naming, saving, reading, resuming, ``--init_from``, stopping
on a signal, and the RNG state that makes a resumed run bit-identical to an uninterrupted one.

A checkpoint (``last.pt``, ``best.pt``) is one dict, built and read only here:
``epoch, method, args, num_classes, networks, optimizers, noisy_labels, is_clean, true_labels,
history, rng, partial`` (the progress of a run stopped mid-epoch, else None) and
``method_state`` (what the method carries between epochs: SELF's and CORE's lambdas,
PurifyNet's stage-2 labels and weights, Co-teaching's counts). Checkpoints written before the
lambdas moved into ``method_state`` hold them in a top-level ``lambdas``; they still resume.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
import json
import random
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
import torch

from datasets.noise import NoisyLabels
from methods import Peer
from model import build_model
from core_reid.utils import UserError, atomic_write, first_line

if TYPE_CHECKING:  # the run's state, which holds this module's checkpoints' contents
    from core_reid.run_state import RunState

NOISE_FILE = "noisy_labels.npz"  # the run's noisy labels, beside its checkpoints
# Settings a resumed run must share with the run it continues.
MUST_MATCH_ON_RESUME = ("dataset", "train_split", "noise_ratio", "noise_seed", "pattern",
                        "pattern_view", "seed", "arch", "img_size", "head_act", "dropout",
                        "train_transform", "eval_protocol", "rerank")


@dataclass
class EpochProgress:
    """How far an epoch has come: the next step and its running sums. A run stopped by a signal
    saves it (with the random generators' state) so that the resumed epoch ends exactly as an
    uninterrupted one."""
    step: int
    loss_sum: list[float]
    correct: list[int]
    seen: int
    seconds: float
    finished: bool = False

    @property
    def mean_loss(self) -> list[float]:
        return [x / self.seen for x in self.loss_sum]

    @property
    def train_acc(self) -> list[float]:
        return [x / self.seen for x in self.correct]


class StopSignals:
    """While a run trains, SIGTERM, SIGUSR1 and SIGUSR2 (a cluster's pre-emption or time-limit
    warning; submitit's jobs ask SLURM for USR2) ask it to stop after the current step and save a
    resumable ``last.pt``, instead of dying."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self) -> None:
        self.name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only there can Python
            for name in self.SIGNALS:                               # install handlers
                if hasattr(signal, name):
                    number = getattr(signal, name)
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def run_name(args: argparse.Namespace) -> str:
    """e.g. market_core_random0.2_noiseseed1_lr0.01_seed1 (no epoch count: --resume can extend
    a run; clean runs have no noise seed)."""
    noise = "clean" if args.noise_ratio == 0 else (
        f"{'pattern' if args.pattern else 'random'}{args.noise_ratio:g}"
        f"_noiseseed{args.noise_seed}")
    arch = "" if args.arch == "resnet50" else f"_{args.arch}"
    return f"{args.dataset}_{args.method}_{noise}_lr{args.lr:g}_seed{args.seed}{arch}"


def resolve_run(args: argparse.Namespace, name: str) -> tuple[Path, Optional[Path]]:
    """(run folder, checkpoint to resume from). A new run never overwrites an earlier one: if
    the name is taken, it gets a suffix (-2, -3, ...); --resume auto takes the latest."""
    if args.resume not in (None, "auto"):  # options.check_args made sure it is a file
        ckpt = Path(args.resume)
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


@contextmanager
def discard_if_unfinished(run_dir: Path, fresh: bool) -> Iterator[None]:
    """A new run whose start fails (bad data, an error in its first epoch, Ctrl-C) before its
    first checkpoint leaves no half-made run folder behind."""
    try:
        yield
    except BaseException:
        if fresh and not (run_dir / "last.pt").is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back the generators saved with a checkpoint (every epoch also reseeds its own)."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run: RunState, epoch: int, partial: Optional[EpochProgress] = None) -> None:
    """Write everything needed to continue ``run`` after ``epoch`` (and, for a run stopped
    mid-epoch, the ``partial`` progress of epoch + 1) to its ``last.pt``, atomically: a crash
    leaves the previous file, never a half-written one."""
    labels = run.labels
    state = {"epoch": epoch, "method": run.method.name, "args": vars(run.args),
             "num_classes": run.num_classes, "networks": [p.net.state_dict() for p in run.peers],
             "optimizers": [p.optimizer.state_dict() for p in run.peers],
             "noisy_labels": labels.noisy_labels, "is_clean": labels.is_clean,
             "true_labels": labels.clean_labels, "history": run.recorder.history,
             "rng": rng_states(),
             "partial": dataclasses.asdict(partial) if partial is not None else None,
             "method_state": run.method.state_dict()}
    atomic_write(run.run_dir / "last.pt", lambda tmp: torch.save(state, tmp))


def copy_checkpoint(source: Path, target: Path) -> None:
    """``best.pt`` = a copy of the ``last.pt`` just written (atomic, no second serialisation)."""
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def read_checkpoint(path: Path, flag: str) -> dict[str, Any]:
    """A checkpoint written by this project, or a UserError naming ``flag``."""
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"{flag} {path}: cannot read it, the file is damaged or truncated "
                        f"({first_line(err)})") from None
    if not isinstance(state, dict) or "networks" not in state:
        raise UserError(f"{flag} {path}: not a checkpoint of train_self.py / train_core.py")
    return state


def checkpoint_labels(state: dict[str, Any], meta: dict) -> NoisyLabels:
    """The noisy labels a checkpoint's run trained on."""
    return NoisyLabels(state["true_labels"], state["noisy_labels"], state["is_clean"], meta)


def load_for_resume(path: Path, args: argparse.Namespace, method: str,
                    fixed: Sequence[str] = (), before_flag: Optional[dict[str, Any]] = None
                    ) -> dict[str, Any]:
    """The checkpoint to resume, checked against this command's settings (those every run must
    keep, and the method's ``fixed`` ones; ``before_flag``: what a checkpoint that predates
    one of them ran with); for a damaged one, the error names the run's other checkpoint when
    that one is readable."""
    try:
        state = read_checkpoint(path, "--resume")
    except UserError as err:
        for other in (path.with_name("best.pt"), path.with_name("last.pt")):
            if other != path and other.is_file():
                try:
                    epoch = read_checkpoint(other, "--resume")["epoch"]
                except UserError:
                    continue
                raise UserError(f"{err}; {other} (epoch {epoch}) is readable: resume from it "
                                f"with --resume {other}") from None
        raise UserError(f"{err}; no other checkpoint of this run is readable: start a new run "
                        "without --resume") from None
    if state["method"] != method:
        raise UserError(f"--resume {path}: a {state['method']} run cannot continue as {method}; "
                        "use the script and method that started it")
    for key in (*MUST_MATCH_ON_RESUME, *fixed):
        saved = state["args"].get(key, (before_flag or {}).get(key, "(not recorded)"))
        if saved != getattr(args, key):
            raise UserError(f"--resume {path}: the run used --{key} {saved}, this command says "
                            f"{getattr(args, key)}; use the same value or start a new run")
    return state


def check_metrics_file(run_dir: Path, state: dict[str, Any]) -> None:
    """Refuse to resume over a metrics.json that is not the run's own: changed by hand, not
    JSON, or holding epochs beyond the checkpoint (one more is normal after a kill)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return
    fix = "move it aside and the run writes a new one from its checkpoint"
    try:
        history = json.loads(path.read_text())["history"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a metrics.json this project wrote ({first_line(err)}); "
                        f"{fix}") from None
    saved = json.loads(json.dumps(state["history"]))
    if history[:len(saved)] != saved:
        raise UserError(f"{path}: its history differs from the checkpoint's (edited by hand?); "
                        f"{fix}")
    if len(history) > len(saved) + 1:
        raise UserError(f"{path}: holds epochs up to {history[-1].get('epoch')} beyond the "
                        f"checkpoint's epoch {state['epoch']}, which resuming would drop; {fix}")


def restore_peers(peers: Sequence[Peer], state: dict[str, Any], num_classes: int
                  ) -> tuple[int, Optional[tuple[EpochProgress, dict]]]:
    """Load networks, optimisers and RNG states; returns the epoch to continue at and, for a run
    stopped mid-epoch, that epoch's progress with the generators' state there. (The method's
    own state, ``saved_method_state(state)``, is the method's to load.)"""
    if state["num_classes"] != num_classes:
        raise UserError(f"the run to resume was trained on {state['num_classes']} classes, this "
                        f"training split has {num_classes}; point --data_dir at its dataset")
    for p, net_state, opt_state in zip(peers, state["networks"], state["optimizers"]):
        p.net.load_state_dict(net_state)
        p.optimizer.load_state_dict(opt_state)
    restore_rng_states(state["rng"])
    partial = state.get("partial")
    return state["epoch"] + 1, (EpochProgress(**partial), state["rng"]) if partial else None


def saved_method_state(state: dict[str, Any]) -> dict[str, Any]:
    """The method's state in a checkpoint; in one written before lambda became the method's
    state, its top-level ``lambdas`` join it."""
    legacy = {"lambdas": state["lambdas"]} if "lambdas" in state else {}
    return {**legacy, **(state.get("method_state") or {})}


def init_peers_from(paths: Sequence[str], peers: Sequence[Peer], args: argparse.Namespace,
                    num_classes: int, flag: str = "--init_from") -> list[str]:
    """``--init_from CKPT1 CKPT2``, the released code's meaning of ``--resume``: each CORE peer
    starts from the network of a one-network run (SELF, baseline, PurifyNet); optimisers,
    lambda and the epoch start afresh. PurifyNet's stage 2 alone starts the same way
    (``--stage1_checkpoint``). Returns notes for the log (e.g. the runs trained on other noisy
    labels)."""
    if len(paths) != len(peers):
        raise UserError(f"{flag} takes {len(peers)} checkpoints (one per network), got "
                        f"{len(paths)}")
    notes = []
    for k, (path, peer) in enumerate(zip(paths, peers), start=1):
        state = read_checkpoint(Path(path), flag)
        if len(state["networks"]) != 1:
            raise UserError(f"{flag} {path}: a {state['method']} checkpoint; give the "
                            "last.pt or best.pt of a train_self.py run (SELF, baseline or "
                            "PurifyNet)")
        if state["num_classes"] != num_classes:
            raise UserError(f"{flag} {path}: trained on {state['num_classes']} classes "
                            f"but this training split has {num_classes}; use a run on the same "
                            "dataset and split")
        saved = state["args"]
        if saved["arch"] != args.arch:
            raise UserError(f"{flag} {path}: a {saved['arch']} network, this run is "
                            f"--arch {args.arch}; use the same --arch")
        try:
            peer.net.load_state_dict(state["networks"][0])
        except RuntimeError as err:  # e.g. a different head
            raise UserError(f"{flag} {path}: does not fit this network "
                            f"({str(err).splitlines()[0]})") from None
        noise = ("noise_ratio", "noise_seed", "pattern", "dataset", "train_split")
        differ = [f"--{key} {saved.get(key)}" for key in noise
                  if saved.get(key) != getattr(args, key)]
        notes.append(f"network {k} starts from {path} (a {state['method']} run, epoch "
                     f"{state['epoch']})" + (f"; note: that run trained with {', '.join(differ)}"
                                             if differ else ""))
    return notes


def network_from_checkpoint(state: dict[str, Any], index: int = 0) -> torch.nn.Module:
    """Network ``index`` of a checkpoint, rebuilt with the run's own architecture (on the CPU)."""
    saved = state["args"]
    net = build_model(saved["arch"], state["num_classes"], "none", saved["head_act"],
                      saved["dropout"])
    net.load_state_dict(state["networks"][index])
    return net
