"""Co-teaching (Han et al., NeurIPS 2018): two networks on the same batches; each keeps the
small-loss part of the batch and its peer trains on it."""
from __future__ import annotations

import argparse
from typing import Any, Optional

import torch

import losses
from core_reid.utils import check_number
from methods.base import Method, RunAccess


class CoTeaching(Method):
    """Co-teaching: each network ranks the batch by its own cross-entropy on the noisy labels,
    keeps the ``1 - r(t)`` fraction with the smallest, and the *other* network trains on those.
    r(t) = forget_rate * min(t / forget_epochs, 1)."""
    name = "coteaching"
    title = "Co-teaching"
    script = "train_core.py"
    summary = "Co-teaching (Han et al. 2018) with the same networks, schedule and data"
    networks = 2

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.forget_rate, self.forget_epochs = args.forget_rate, args.forget_epochs
        self.is_clean: Optional[torch.Tensor] = None
        # per network: [samples it selected, noisy samples among them] in this epoch
        self.counts: Optional[torch.Tensor] = None

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--forget_rate", type=float, default=None,
          help="the fraction tau of each batch the small-loss selection drops once its "
          "schedule has ramped up (default: --noise_ratio)")
        a("--forget_epochs", type=int, default=10,
          help="T_k: the drop rate grows as tau * min(epoch / T_k, 1), epochs counted from 0")

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        if args.forget_rate is None:
            args.forget_rate = args.noise_ratio

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        check_number("--forget_rate", args.forget_rate, 0 <= args.forget_rate < 1,
                     "in [0, 1) (default: the noise ratio)")
        check_number("--forget_epochs", args.forget_epochs, args.forget_epochs >= 0,
                     ">= 0 (default: 10; 0 drops the full rate from the first epoch)")

    def stage(self, epoch: int) -> str:
        return "co-teaching"

    def drop_rate(self, epoch: int) -> float:
        return losses.forget_rate(epoch, self.forget_rate, self.forget_epochs)

    def setup(self, run: RunAccess) -> None:
        self.is_clean = torch.as_tensor(run.labels.is_clean, device=run.device)
        if self.counts is None:
            self.counts = torch.zeros(2, 2, dtype=torch.long, device=run.device)
        self.counts = self.counts.to(run.device)

    def begin_epoch(self, run: RunAccess, epoch: int) -> list[str]:
        self.counts.zero_()
        return []

    def count_selected(self, index: torch.Tensor, chosen: tuple[torch.Tensor, ...]) -> None:
        """Add each network's selection (batch positions) and its noisy samples to the
        epoch's counts."""
        noisy = ~self.is_clean[index.to(self.is_clean.device)]
        with torch.no_grad():
            for k, picked in enumerate(chosen):
                self.counts[k, 0] += len(picked)
                self.counts[k, 1] += noisy[picked.to(noisy.device)].sum()

    def batch_losses(self, epoch, logits, labels, index):
        first, second, chosen1, chosen2 = losses.co_teaching_losses(
            logits[0], logits[1], labels, self.drop_rate(epoch))
        self.count_selected(index, (chosen1, chosen2))
        return [first, second]

    def extra_stats(self, epoch: int, k: int) -> dict[str, Any]:
        """Network k: the noisy fraction of what it selected for its peer, and the label
        precision of what it trained on (what its peer selected)."""
        counts = self.counts.tolist()
        noisy_fraction = [n / total if total else 0.0 for total, n in counts]
        return {"forget_rate": self.drop_rate(epoch),
                "selected_noisy_fraction": noisy_fraction[k],
                "train_label_precision": 1.0 - noisy_fraction[1 - k]}

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist() if self.counts is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("counts") is not None:
            self.counts = torch.tensor(state["counts"], dtype=torch.long)
