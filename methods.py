"""What each method adds to the shared loop: how many networks, which loss in which epoch,
SELF's weight lambda and CORE's stage switch. The formulas themselves are in losses.py, the
loop in core_reid/engine.py.

- baseline: one network, cross-entropy on the noisy labels.
- SELF: one network, ``-(1 - lam) log p[y] - lam log max p``; lam = 1 / (1 + last epoch's
  mean loss), 0 in the first epoch.
- CORE: two peers on the same batches; SELF (each its own lam) for epochs <= stage1_epochs
  (the released code: 20), then co-refining: each learns from the other's refined label and
  distribution.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

import losses

METHODS = ("baseline", "self", "core")


@dataclass
class Peer:
    """One network with its optimiser and its SELF weight lambda (None: no lambda)."""
    net: torch.nn.Module          # the ReIDNet (state dict, pool5)
    model: torch.nn.Module        # what the loop calls: ``net`` or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    lam: Optional[float] = None


class Baseline:
    """Plain cross-entropy on the annotated (noisy) labels."""
    name = "baseline"
    networks = 1
    first_lambda: Optional[float] = None

    def stage(self, epoch: int) -> str:
        return "baseline"

    def batch_losses(self, epoch: int, logits: Sequence[torch.Tensor], labels: torch.Tensor,
                     peers: Sequence[Peer]) -> list[torch.Tensor]:
        """Each network's loss on one batch."""
        return [losses.cross_entropy_loss(out, labels) for out in logits]

    def next_lambda(self, mean_epoch_loss: float) -> Optional[float]:
        return None

    def uses_lambda(self, epoch: int) -> bool:
        """Whether this epoch's loss has lambda in it (only then is it recorded)."""
        return False

    def schedule_warnings(self, milestones: Sequence[int], epochs: int) -> list[str]:
        return []


class SelfRefining(Baseline):
    """SELF: the annotated label and the network's own prediction, weighted by lambda."""
    name = "self"
    first_lambda = 0.0

    def stage(self, epoch: int) -> str:
        return "SELF"

    def batch_losses(self, epoch, logits, labels, peers):
        return [losses.self_refining_loss(out, labels, p.lam) for out, p in zip(logits, peers)]

    def next_lambda(self, mean_epoch_loss: float) -> Optional[float]:
        return losses.next_lambda(mean_epoch_loss)

    def uses_lambda(self, epoch: int) -> bool:
        return self.stage(epoch) == "SELF"


class CoRefining(SelfRefining):
    """CORE: two peers, SELF for epochs <= stage1_epochs, then online co-refining."""
    name = "core"
    networks = 2

    def __init__(self, stage1_epochs: int, kl_weight: float, selective: bool):
        self.stage1_epochs, self.kl_weight, self.selective = stage1_epochs, kl_weight, selective

    def stage(self, epoch: int) -> str:
        return "SELF" if epoch <= self.stage1_epochs else "co-refining"

    def batch_losses(self, epoch, logits, labels, peers):
        if self.stage(epoch) == "SELF":
            return super().batch_losses(epoch, logits, labels, peers)
        first, second = logits
        return [losses.co_refining_loss(first, second, self.kl_weight, self.selective),
                losses.co_refining_loss(second, first, self.kl_weight, self.selective)]

    def schedule_warnings(self, milestones: Sequence[int], epochs: int) -> list[str]:
        """Co-refining that starts at the large learning rate can collapse both peers."""
        first_co = self.stage1_epochs + 1
        if first_co >= epochs or not milestones or first_co >= milestones[0]:
            return []
        return [f"warning: co-refining starts at epoch {first_co}, before the first learning-"
                f"rate decay (epoch {milestones[0]}): at the large learning rate both peers "
                "can collapse onto a few classes (label precision near 0 on our test data). "
                "The released schedule starts it after the decay (--stage1_epochs 20, "
                "--milestones 20 50); set --stage1_epochs >= first milestone - 1"]


def make_method(name: str, args: argparse.Namespace) -> Baseline:
    """The method object for ``name`` (CORE reads --stage1_epochs, --kl_weight, --selective)."""
    if name == "core":
        return CoRefining(args.stage1_epochs, args.kl_weight, args.selective)
    return {"baseline": Baseline, "self": SelfRefining}[name]()
