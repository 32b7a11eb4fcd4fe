"""One training run's state, in one object: what the loop's helpers share (``(run, epoch, ...)``)
and what a method may ask of the run it trains in (``methods.RunAccess``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datasets.noise import NoisyLabels
from methods import Method, Peer
from core_reid.numerics import Numerics
from core_reid.recorder import RunRecorder
from core_reid.run_data import RunData, train_descriptors_and_classes, train_logits
from core_reid.runs import read_checkpoint


def make_optimizer(args: argparse.Namespace, net: torch.nn.Module,
                   numerics: Numerics) -> torch.optim.Optimizer:
    """The released SGD: Nesterov momentum, weight decay, the new head at 10x the lr. Fused
    where the numerics say so; otherwise the multi-tensor ("foreach") update, which is CUDA's
    default and computes the same elementwise operations as the single-tensor loop, bit for bit
    (tested), at about half its cost on the CPU, where torch would pick the loop."""
    return torch.optim.SGD(net.param_groups(args.lr), lr=args.lr, momentum=args.momentum,
                           nesterov=True, weight_decay=args.weight_decay,
                           **({"fused": True} if numerics.fused_sgd else {"foreach": True}))


@dataclass
class RunState:
    """A run being trained: its flags, method, networks, data, labels, device and numerics, its
    folder and recorder, and ``lr``, the backbone's learning rate for every epoch (the method's
    schedule, built once)."""
    args: argparse.Namespace
    method: Method
    peers: list[Peer]
    data: RunData
    labels: NoisyLabels
    device: torch.device
    numerics: Numerics
    lr: np.ndarray
    run_dir: Optional[Path] = None  # None (and no recorder): a run that keeps nothing, e.g. a
    recorder: Optional[RunRecorder] = None  # benchmark's

    @property
    def epochs(self) -> int:
        """Epochs in the whole run (every stage)."""
        return len(self.lr)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @cached_property
    def noisy(self) -> torch.Tensor:
        """The noisy labels on the device, what the networks train on."""
        return torch.as_tensor(self.labels.noisy_labels, device=self.device)

    def set_lr(self, epoch: int) -> None:
        """Every optimiser at ``epoch``'s learning rate (the head at its multiple)."""
        for p in self.peers:
            for group in p.optimizer.param_groups:
                group["lr"] = float(self.lr[epoch]) * group["lr_mult"]

    # ---- methods.RunAccess --------------------------------------------------------------------

    def train_outputs(self, net: torch.nn.Module, view: str = "flipped"
                      ) -> tuple[np.ndarray, np.ndarray]:
        return train_descriptors_and_classes(net, self.data, self.device, self.numerics, view)

    def train_logits(self, net: torch.nn.Module) -> torch.Tensor:
        return train_logits(net, self.data, self.device, self.numerics)

    def load_best(self) -> str:
        state = read_checkpoint(self.run_dir / "best.pt", "best.pt")
        for p, net_state in zip(self.peers, state["networks"]):
            p.net.load_state_dict(net_state)
        return f"the networks go back to {self.run_dir / 'best.pt'} (epoch {state['epoch']})"

    def reset_optimizers(self) -> None:
        for p in self.peers:
            p.optimizer = make_optimizer(self.args, p.net, self.numerics)
