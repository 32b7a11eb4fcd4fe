"""Co-teaching (Han et al., NeurIPS 2018): two networks on the same batches; each keeps the
small-loss part of the batch and its peer trains on it. The fraction dropped: the true noise
rate, or (``--forget_rate auto``) the rate estimated from the training losses."""
from __future__ import annotations

import argparse
from typing import Any, Optional, Union

import torch

import losses
from core_reid.utils import UserError, check_number
from methods.base import Method, RunAccess


class CoTeaching(Method):
    """Co-teaching: each network ranks the batch by its own cross-entropy on the noisy labels,
    keeps the ``1 - r(t)`` fraction with the smallest, and the *other* network trains on those.
    r(t) = tau * min(t / forget_epochs, 1), tau = ``--forget_rate``, or with 'auto' the noise
    rate estimated from the training losses before each epoch t of the ramp (1 <= t <=
    forget_epochs; epoch 0 drops nothing whatever tau) and kept from then on; the last estimate
    is in the method's state."""
    name = "coteaching"
    title = "Co-teaching"
    script = "train_core.py"
    summary = "Co-teaching (Han et al. 2018) with the same networks, schedule and data"
    networks = 2
    fixed_on_resume = ("forget_rate", "forget_epochs")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.auto = args.forget_rate == "auto"
        self.tau: Optional[float] = None if self.auto else float(args.forget_rate)
        self.estimate: Optional[dict[str, float]] = None  # 'auto': what the estimate found
        self.forget_epochs = args.forget_epochs
        self.is_clean: Optional[torch.Tensor] = None
        # per network: [samples it selected, noisy samples among them] in this epoch
        self.counts: Optional[torch.Tensor] = None

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--forget_rate", type=rate_or_auto, default=None, metavar="TAU",
          help="the fraction tau of each batch the small-loss selection drops once its "
          "schedule has ramped up (default: --noise_ratio, the true rate, as the authors' "
          "code); 'auto': the noise rate estimated from the training data alone, a mixture on "
          "the per-sample losses re-estimated before each epoch of the ramp and kept from "
          "epoch T_k on (recorded as forget_rate_estimate; see docs/methods.md)")
        a("--forget_epochs", type=int, default=10,
          help="T_k: the drop rate grows as tau * min(epoch / T_k, 1), epochs counted from 0")

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        if args.forget_rate is None:
            args.forget_rate = args.noise_ratio

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        if args.forget_rate != "auto":
            check_number("--forget_rate", args.forget_rate, 0 <= args.forget_rate < 1,
                         "in [0, 1) or 'auto' (default: the noise ratio)")
        elif args.forget_epochs == 0:
            raise UserError("--forget_rate auto with --forget_epochs 0: the rate is estimated "
                            "after epoch 0, which must drop nothing; give --forget_epochs >= 1 "
                            "(default 10) or a number for --forget_rate")
        check_number("--forget_epochs", args.forget_epochs, args.forget_epochs >= 0,
                     ">= 0 (default: 10; 0 drops the full rate from the first epoch)")

    def stage(self, epoch: int) -> str:
        return "co-teaching"

    def drop_rate(self, epoch: int) -> float:
        if self.tau is None:  # 'auto' before the estimate: only epoch 0, which drops nothing
            return losses.forget_rate(epoch, 0.0, self.forget_epochs)
        return losses.forget_rate(epoch, self.tau, self.forget_epochs)

    def setup(self, run: RunAccess) -> None:
        self.is_clean = torch.as_tensor(run.labels.is_clean, device=run.device)
        if self.counts is None:
            self.counts = torch.zeros(2, 2, dtype=torch.long, device=run.device)
        self.counts = self.counts.to(run.device)

    def begin_epoch(self, run: RunAccess, epoch: int) -> list[str]:
        self.counts.zero_()
        if not self.auto or epoch == 0 or epoch > self.forget_epochs:
            return []
        self.estimate = estimate_forget_rate(run)
        self.tau = self.estimate["forget_rate_estimate"]
        return [f"forget rate estimated at epoch {epoch} from the training losses: tau = "
                f"{self.tau:.3f} (loss mixture: {self.estimate['clean_mean_loss']:.3f} / "
                f"{self.estimate['noisy_mean_loss']:.3f} mean per-sample loss, clean / noisy "
                f"component)"]

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
                **({"forget_rate_estimate": self.tau} if self.auto else {}),
                "selected_noisy_fraction": noisy_fraction[k],
                "train_label_precision": 1.0 - noisy_fraction[1 - k]}

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist() if self.counts is not None else None,
                "tau": self.tau, "estimate": self.estimate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("counts") is not None:
            self.counts = torch.tensor(state["counts"], dtype=torch.long)
        if self.auto:
            self.tau, self.estimate = state.get("tau"), state.get("estimate")


def rate_or_auto(text: str) -> Union[float, str]:
    """A number, or the word 'auto'."""
    return "auto" if text == "auto" else float(text)


def estimate_forget_rate(run: RunAccess) -> dict[str, float]:
    """Co-teaching's (or any small-loss method's) tau from the training data alone: the noise
    rate ``losses.estimate_noise_rate`` finds in the per-sample cross-entropy on the annotated
    labels, averaged over the run's networks (eval mode, no augmentation)."""
    noisy = torch.as_tensor(run.labels.noisy_labels, device=run.device)
    per_sample = torch.stack([
        torch.nn.functional.cross_entropy(run.train_logits(p.net), noisy, reduction="none")
        for p in run.peers]).mean(dim=0)
    return losses.estimate_noise_rate(per_sample.cpu().numpy())
