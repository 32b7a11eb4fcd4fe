"""JoCoR (Wei et al., "Combating Noisy Labels by Agreement: A Joint Training Method with
Co-Regularization", CVPR 2020): two networks on the same batches. Per sample, one joint loss

    (1 - lam) * (CE(p1, y) + CE(p2, y)) + lam * (KL(p1 || p2) + KL(p2 || p1)),

the co-regularization pulling the two predictions together (neither side detached); both
networks train on the same small-loss selection of it, the ``1 - r(t)`` fraction of the batch
with the smallest joint loss, with Co-teaching's forget schedule r(t) (``--forget_rate``,
``--forget_epochs``). The authors' code (github hongxin001/JoCoR, ``algorithm/loss.py``) and
where this one differs: docs/methods.md.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from core_reid.utils import check_number
from methods.coteaching import CoTeaching


def kl_per_sample(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of each sample, p = softmax(logits), q = softmax(target_logits): the
    authors' ``kl_loss_compute(logits, target_logits)`` before its batch mean, gradients into
    both sides. q enters as log-probabilities: their softmax target gives a NaN gradient once
    one of its probabilities underflows to 0 (a logit gap beyond ~100 in float32)."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(target_logits, dim=1),
                    reduction="none", log_target=True).sum(dim=1)


def jocor_losses(logits: torch.Tensor, peer_logits: torch.Tensor, labels: torch.Tensor,
                 co_lambda: float, drop_rate: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """JoCoR on one batch: (network 1's part, network 2's part, the selected samples). The
    selection is the ``int((1 - drop_rate) n)`` samples (at least one; ties: lower index first)
    with the smallest joint loss; each part is the selection's mean of that network's
    ``(1 - lam) CE + lam KL(peer || it)``, so the two add up to the joint loss's mean over the
    selection, which the authors minimise, and its gradient is the same."""
    first, second = logits.float(), peer_logits.float()
    ce_1 = F.cross_entropy(first, labels, reduction="none") * (1 - co_lambda)
    ce_2 = F.cross_entropy(second, labels, reduction="none") * (1 - co_lambda)
    kl_1 = co_lambda * kl_per_sample(first, second)  # KL(p2 || p1): pulls network 1 to 2
    kl_2 = co_lambda * kl_per_sample(second, first)
    joint = ce_1 + ce_2 + kl_1 + kl_2  # the authors' sum, in their order
    keep = max(1, int((1 - drop_rate) * len(labels)))
    chosen = torch.sort(joint.detach(), stable=True).indices[:keep]
    return (ce_1 + kl_1)[chosen].mean(), (ce_2 + kl_2)[chosen].mean(), chosen


class JoCoR(CoTeaching):
    """JoCoR: both networks learn from one joint loss (cross-entropy plus a symmetric KL
    between their predictions) on the small-loss part of the batch they agree on. Its
    diagnostics are Co-teaching's, of the one selection both train on."""
    name = "jocor"
    title = "JoCoR"
    summary = ("JoCoR (Wei et al. 2020): both networks learn from the small-loss part of one "
               "joint loss with co-regularization; reads --forget_rate and --forget_epochs too")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.co_lambda = args.co_lambda

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--co_lambda", type=float, default=0.9,
            help="lambda: the weight of the co-regularization (the two KL terms), 1 - lambda "
            "that of the cross-entropies; 0.9 is the authors' advice for symmetric noise (their "
            "code's default, 0.1, is not what their results used; see docs/methods.md)")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        super().check_args(args)
        check_number("--co_lambda", args.co_lambda, 0 <= args.co_lambda <= 1,
                     "in [0, 1] (default: 0.9, the authors' advice)")

    def stage(self, epoch: int) -> str:
        return "jocor"

    def batch_losses(self, epoch, logits, labels, index):
        first, second, chosen = jocor_losses(logits[0], logits[1], labels, self.co_lambda,
                                             self.drop_rate(epoch))
        self.count_selected(index, (chosen, chosen))
        return [first, second]
