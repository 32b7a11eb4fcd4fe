"""What every method is: one class that declares its name, title and script, its own flags and
their checks and defaults, its learning-rate schedule, its state, and the hooks through which the
shared loop (core_reid/engine.py) asks it what to do. The loop never branches on a method's
name; docs/adding_a_method.md says when it calls each hook.

``Method``'s hooks default to the plain one-stage run (one network, cross-entropy on the noisy
labels, the released step decay); a method overrides what it changes.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch

import losses
from datasets.noise import NoisyLabels


@dataclass
class Peer:
    """One network with its optimiser."""
    net: torch.nn.Module          # the ReIDNet (state dict, pool5)
    model: torch.nn.Module        # what the loop calls: ``net`` or its torch.compile wrapper
    optimizer: torch.optim.Optimizer


class RunAccess(Protocol):
    """What a method may ask of the run it trains in (core_reid.run_state.RunState provides
    it; a method that needs more adds it here and there)."""
    args: argparse.Namespace
    peers: list[Peer]
    labels: NoisyLabels
    device: torch.device

    @property
    def num_classes(self) -> int: ...

    def train_outputs(self, net: torch.nn.Module, view: str = "flipped"
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(descriptor, predicted class) of every training image, in sample order: test
        transform, eval mode; the class from the logits of the ``view`` named ('flipped': the
        mirrored image's, as the released extractor; 'plain': the image's own)."""

    def train_logits(self, net: torch.nn.Module) -> torch.Tensor:
        """Class logits of every training image, in sample order: eval mode, no augmentation
        (float32, on the device)."""

    def load_best(self) -> str:
        """The run's best.pt networks into the peers; returns a note for the log."""

    def reset_optimizers(self) -> None:
        """A fresh optimiser (no momentum) for every peer."""


def step_decay(lr: float, milestones: Sequence[int], epochs: int) -> np.ndarray:
    """The released schedule, one value per epoch: ``lr`` times 0.1 for every milestone
    reached (the same float arithmetic as the released per-epoch computation)."""
    return np.array([lr * 0.1 ** sum(epoch >= m for m in milestones)
                     for epoch in range(epochs)], dtype=np.float64)


class Method:
    """The plain one-stage run: one network, cross-entropy on the annotated (noisy) labels, the
    step decay. Every hook below is what the loop asks every method; a method overrides what it
    changes.

    The learning-rate schedule is built once, per epoch, by ``lr_schedule``: an array of the
    backbone's learning rate for every epoch of the run (the head gets its multiple). Per epoch
    and not per step (DINO's per-iteration arrays), because every schedule this project
    reproduces changes once per epoch (the released step decay, PurifyNet's StepLR, the
    Co-teaching and JoCoR authors' per-epoch decays); because the array is then known from the
    flags alone, before any data is read (the grid plans a run's length from it); and because
    the ``lr`` recorded for an epoch is then exactly the rate every one of its steps used. A
    method that wants a per-step rate can set it in ``after_step``.
    """
    name = ""                # --method NAME
    title = ""               # in the grid's tables and figures
    script = ""              # the training script that runs it: train_self.py or train_core.py
    script_default = False   # the script's method when --method is not given (not inherited)
    summary = ""             # its line in --method's help
    networks = 1
    # Flag defaults this method changes: explicit flags and, with --demo, the demo's values win.
    defaults: dict[str, Any] = {}
    demo_defaults: dict[str, Any] = {}  # its own flags' values under --demo
    # (flag, checkpoints) the networks start from, when a run starts
    init_checkpoints: Optional[tuple[str, list[str]]] = None
    fixed_on_resume: tuple[str, ...] = ()  # flags a resumed run may not change
    # What a checkpoint written before one of those flags existed ran with (flag: value).
    fixed_before_flag: dict[str, Any] = {}
    uses_train_test_view = False  # reads the training images through the test transform

    def __init__(self, args: argparse.Namespace):
        """The method for a run with these (parsed and checked) flags."""

    # ---- its flags (class-level: the parsers are built before any run) ----------------------

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """Add the flags this class introduces to ``parser`` (or an argument group); a
        subclass reads its bases' flags too."""

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        """Fill in the flags whose default depends on other flags (before the checks)."""

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        """Raise a one-line UserError for the first of its flags that cannot serve."""

    @classmethod
    def flag_classes(cls) -> list[type[Method]]:
        """The classes, base first, whose ``add_args`` adds flags this method reads."""
        return [k for k in reversed(cls.__mro__)
                if k is not Method and issubclass(k, Method) and "add_args" in vars(k)]

    # ---- its schedule and stages ----------------------------------------------------------------

    def lr_schedule(self, args: argparse.Namespace) -> np.ndarray:
        """The backbone's learning rate for every epoch of the run; its length is the run's
        number of epochs. Default: the released step decay over ``--epochs``."""
        return step_decay(args.lr, args.milestones, args.epochs)

    def stage(self, epoch: int) -> str:
        return self.name

    def ends_stage(self, epoch: int) -> bool:
        """Whether ``epoch`` ends a stage before the last (then network 1 is tested)."""
        return False

    def schedule_warnings(self, args: argparse.Namespace) -> list[str]:
        """Lines for the log about a schedule that is valid but likely to go wrong."""
        return []

    # ---- the loop's hooks, in the order it calls them ---------------------------------------

    def setup(self, run: RunAccess) -> None:
        """Once per process, before the first epoch trained (also when resuming)."""

    def begin_epoch(self, run: RunAccess, epoch: int) -> list[str]:
        """Before an epoch trains (not when a resumed run continues one mid-way: what this
        changed is in the checkpoint); returns lines for the log."""
        return []

    def batch_losses(self, epoch: int, logits: Sequence[torch.Tensor], labels: torch.Tensor,
                     index: torch.Tensor) -> list[torch.Tensor]:
        """Each network's loss on one batch (``index``: the batch's sample numbers). The loop
        back-propagates their sum once, so a loss may reach every network."""
        return [losses.cross_entropy_loss(out, labels) for out in logits]

    def after_backward(self, run: RunAccess, epoch: int, step: int) -> None:
        """After the backward pass, before the optimisers step (e.g. gradient clipping)."""

    def after_step(self, run: RunAccess, epoch: int, step: int) -> None:
        """After the optimisers stepped (e.g. an EMA teacher, a per-step learning rate)."""

    def trained_with(self, epoch: int, k: int) -> dict[str, Any]:
        """What network ``k``'s loss used in the epoch just trained (recorded beside its loss,
        e.g. SELF's lambda)."""
        return {}

    def extra_stats(self, epoch: int, k: int) -> dict[str, Any]:
        """Network ``k``'s method-specific label diagnostics for the epoch just trained."""
        return {}

    def end_epoch(self, epoch: int, mean_loss: list[float]) -> None:
        """After an epoch's record, before its checkpoint: carry what the next epoch needs."""

    def state_dict(self) -> dict[str, Any]:
        """What the method carries from epoch to epoch, for the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def flags_of(method_class: type[Method]) -> list[str]:
    """The flags ``method_class``'s own ``add_args`` adds, as ``--name``."""
    scratch = argparse.ArgumentParser(add_help=False)
    method_class.add_args(scratch)
    return [next(s for s in action.option_strings if s.startswith("--"))
            for action in scratch._actions]
