"""The training losses of the baseline, SELF, CORE, PurifyNet and Co-teaching, each averaged
over the batch, and the weights and schedules that go into them.

Notation: p = softmax(logits), y = annotated (possibly noisy) label, q = softmax(peer logits).
"""
from __future__ import annotations

import math

import numpy as np
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


def ramped_lambda(epoch: int, ramp_epochs: int, cap: float = 0.5) -> float:
    """PurifyNet stage 1's weight of the network's own prediction: an exponential ramp-up,
    ``min(exp(-2 (1 - clip(epoch, 0, R) / R)^2), cap)`` (the released script's
    ``sigmoid_rampup`` with R = --LabelWt = 60): 0.135 at epoch 0, the cap 0.5 from about
    R * (1 - sqrt(ln 2 / 2)) ~ 0.41 R on. R = 0 means no ramp: the cap at once."""
    if ramp_epochs == 0:
        return cap
    phase = 1.0 - min(max(epoch, 0), ramp_epochs) / ramp_epochs
    return min(math.exp(-2.0 * phase * phase), cap)


def beta_weights(features: np.ndarray, noisy_labels: np.ndarray, num_classes: int,
                 shape: tuple[float, float] = (2.0, 6.0)) -> np.ndarray:
    """PurifyNet stage 2's weight of every training sample, in sample order.

    Within each class of the *noisy* labels: each member's Euclidean distance to the class's
    mean feature, min-max normalised within the class (all zeros when every distance is the
    same), weight = Beta(alpha, beta) pdf of it. With the released (2, 6) a sample at the mean
    and the one farthest from it both get 0; the peak (2.81) is at 1/6: typical members count
    most, outliers (likely wrong labels) and the most central ones little.
    """
    from scipy import stats
    features = np.asarray(features, dtype=np.float64)
    weights = np.zeros(len(features))
    for c in range(num_classes):
        members = np.flatnonzero(noisy_labels == c)
        if members.size == 0:  # every label of the class was corrupted away
            continue
        group = features[members]
        dist = np.linalg.norm(group - group.mean(axis=0), axis=1)
        span = dist.max() - dist.min()
        dist = dist - dist.min() if span == 0 else (dist - dist.min()) / span
        weights[members] = stats.beta.pdf(dist, *shape)
    return weights


def instance_weighted_loss(logits: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """PurifyNet stage 2: mean_i w_i * CE_i (divided by the batch size, not by the weights'
    sum, as the released ``InstanceWeightLoss``)."""
    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    return (weights * per_sample).mean()


def forget_rate(epoch: int, tau: float, ramp_epochs: int) -> float:
    """Co-teaching's fraction of each batch to drop, r(t) = tau * min(t / T_k, 1), t = the
    epoch counted from 0 (so epoch 0 keeps every sample); T_k = 0: tau at once."""
    return tau if ramp_epochs == 0 else tau * min(epoch / ramp_epochs, 1.0)


def small_loss_indices(logits: torch.Tensor, labels: torch.Tensor,
                       drop_rate: float) -> torch.Tensor:
    """The ``(1 - drop_rate)`` fraction of the batch (at least one sample) on which this
    network's cross-entropy is smallest: what it passes to its peer (ties: lower index first)."""
    per_sample = F.cross_entropy(logits.detach().float(), labels, reduction="none")
    keep = max(1, int((1.0 - drop_rate) * len(labels)))
    return torch.sort(per_sample, stable=True).indices[:keep]


def co_teaching_losses(logits: torch.Tensor, peer_logits: torch.Tensor, labels: torch.Tensor,
                       drop_rate: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Co-teaching (Han et al., NeurIPS 2018) on one batch: (loss of the first network, loss of
    the peer, the samples the first network selected, the samples the peer selected) — each
    network trains, with mean cross-entropy, on the samples its *peer* found small-loss."""
    mine = small_loss_indices(logits, labels, drop_rate)
    theirs = small_loss_indices(peer_logits, labels, drop_rate)
    return (F.cross_entropy(logits[theirs].float(), labels[theirs]),
            F.cross_entropy(peer_logits[mine].float(), labels[mine]), mine, theirs)


def two_gaussian_mixture(values: np.ndarray, reg: float = 5e-4, iterations: int = 500,
                         tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maximum-likelihood two-component Gaussian mixture of 1-d ``values`` by EM:
    (weights, means, standard deviations), the smaller mean first. ``reg`` is added to each
    variance (sklearn's ``reg_covar``), so that no component collapses onto a spike of equal
    values. Deterministic: it works on the sorted values (sums independent of the sample
    order) and starts from their lower and upper halves."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size < 2 or x[0] == x[-1]:
        return np.array([1.0, 0.0]), np.array([x.mean(), x.mean()]), np.full(2, np.sqrt(reg))
    halves = (x[:x.size // 2], x[x.size // 2:])
    weights = np.array([0.5, 0.5])
    means = np.array([h.mean() for h in halves])
    var = np.array([h.var() for h in halves]) + reg
    previous = -np.inf
    for _ in range(iterations):
        log_p = np.log(np.maximum(weights, 1e-300)) - 0.5 * (
            np.log(2 * np.pi * var) + (x[:, None] - means) ** 2 / var)
        top = log_p.max(axis=1, keepdims=True)
        log_total = top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))
        resp = np.exp(log_p - log_total)
        counts = np.maximum(resp.sum(axis=0), 1e-12)
        weights = counts / x.size
        means = (resp * x[:, None]).sum(axis=0) / counts
        var = (resp * (x[:, None] - means) ** 2).sum(axis=0) / counts + reg
        likelihood = float(log_total.sum())
        if likelihood - previous <= tol * abs(likelihood):
            break
        previous = likelihood
    order = np.argsort(means)
    return weights[order], means[order], np.sqrt(var[order])


def estimate_noise_rate(per_sample_losses: np.ndarray) -> dict[str, float]:
    """The fraction of wrong labels in a training set, from each sample's loss on its
    annotated label (DivideMix, Li et al., ICLR 2020): a network that has learned the clean
    labels but not yet memorised the wrong ones gives them low and high losses; the weight of
    the high component of a two-component Gaussian mixture fitted to the losses, min-max
    normalised to [0, 1] with a variance floor of 5e-4 (DivideMix's settings), estimates the
    noise rate. Also returns the two components' means, in loss units."""
    losses_ = np.asarray(per_sample_losses, dtype=np.float64)
    low, span = losses_.min(), np.ptp(losses_)
    weights, means, _ = two_gaussian_mixture((losses_ - low) / span if span > 0
                                             else losses_ - low)
    return {"forget_rate_estimate": float(weights[1]),
            "clean_mean_loss": float(low + span * means[0]),
            "noisy_mean_loss": float(low + span * means[1])}
