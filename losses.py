"""The training losses of the baseline, SELF and CORE, each averaged over the batch.

Notation: p = softmax(logits), y = annotated (possibly noisy) label, q = softmax(peer logits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Baseline: mean_i -log p_i[y_i]."""
    return F.cross_entropy(logits, labels)


def self_refining_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """SELF: mean_i [ -(1 - lam) log p_i[y_i] - lam log max_c p_i[c] ].

    The second term pulls each sample towards the network's own prediction (its refined
    label); ``lam`` grows as the training loss falls, i.e. as the prediction becomes trustworthy.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    annotated = log_p.gather(1, labels[:, None]).squeeze(1)
    refined = log_p.max(dim=1).values
    return (-(1.0 - lam) * annotated - lam * refined).mean()


def co_refining_loss(logits: torch.Tensor, peer_logits: torch.Tensor, kl_weight: float = 1.0,
                     selective: bool = False) -> torch.Tensor:
    """CORE stage 2: learn from the peer's refined label and distribution.

    L = mean_i [ m_i * -log p_i[argmax q_i] ] + kl_weight * mean_i [ -sum_c q_i[c] log p_i[c] ],
    with q detached (no gradient flows into the peer). m_i = 1 for every sample, or with
    ``selective`` (selective consistency) m_i = 1 only where both networks predict the same
    class, so disputed samples do not drive the hard-label term. The mask is per sample; the
    released code applied it to the batch-mean loss instead.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    peer = peer_logits.detach().float()
    peer_label = peer.argmax(dim=1)
    hard = -log_p.gather(1, peer_label[:, None]).squeeze(1)
    if selective:
        hard = hard * (logits.detach().argmax(dim=1) == peer_label)
    soft = -(F.softmax(peer, dim=1) * log_p).sum(dim=1)
    return hard.mean() + kl_weight * soft.mean()


def next_lambda(mean_epoch_loss: float) -> float:
    """SELF's weight for the next epoch: 1 / (1 + mean training loss of this epoch)."""
    return 1.0 / (1.0 + mean_epoch_loss)
