"""SELF (progressive self label refining): one network whose loss mixes the annotated label with
its own prediction, weighted by a lambda that grows as the training loss falls."""
from __future__ import annotations

import argparse
from typing import Any, Optional

import losses
from methods.base import Method


class SelfRefining(Method):
    """SELF: ``-(1 - lam) log p[y] - lam log max p`` per sample; lam = 1 / (1 + last epoch's
    mean loss), 0 in the first epoch. Each network has its own lam: the method's state, saved
    with the checkpoint (``lambdas``)."""
    name = "self"
    title = "SELF"
    script = "train_self.py"
    script_default = True
    summary = "self label refining"

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.lambdas: list[Optional[float]] = [0.0] * self.networks

    def stage(self, epoch: int) -> str:
        return "SELF"

    def uses_lambda(self, epoch: int) -> bool:
        """Whether this epoch's loss has lambda in it (only then is it recorded)."""
        return self.stage(epoch) == "SELF"

    def batch_losses(self, epoch, logits, labels, index):
        return [losses.self_refining_loss(out, labels, lam)
                for out, lam in zip(logits, self.lambdas)]

    def trained_with(self, epoch: int, k: int) -> dict[str, Any]:
        return {"lambda": self.lambdas[k]} if self.uses_lambda(epoch) else {}

    def end_epoch(self, epoch: int, mean_loss: list[float]) -> None:
        self.lambdas = [losses.next_lambda(loss) for loss in mean_loss]

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": list(self.lambdas)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambdas = list(state["lambdas"])
