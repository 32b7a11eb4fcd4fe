"""The losses equal their formulas on fixed logits (computed here independently with numpy)."""
import numpy as np
import pytest
import torch

import losses

LOGITS = np.array([[2.0, 0.5, -1.0, 0.0],
                   [0.1, 0.2, 3.0, -0.5],
                   [1.0, 1.5, 0.2, 0.3]])
PEER = np.array([[0.0, 2.5, 0.1, -1.0],
                 [0.3, 0.1, 2.0, 0.0],
                 [2.0, 0.0, 0.5, 0.1]])
LABELS = np.array([1, 2, 3])


def log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_cross_entropy_is_mean_negative_log_likelihood():
    expected = -log_softmax(LOGITS)[np.arange(3), LABELS].mean()
    got = losses.cross_entropy_loss(t(LOGITS), torch.tensor(LABELS)).item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75, 1.0])
def test_self_refining_loss_formula(lam):
    lp = log_softmax(LOGITS)
    expected = np.mean(-(1 - lam) * lp[np.arange(3), LABELS] - lam * lp.max(axis=1))
    got = losses.self_refining_loss(t(LOGITS), torch.tensor(LABELS), lam).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_self_loss_with_zero_lambda_is_cross_entropy():
    a = losses.self_refining_loss(t(LOGITS), torch.tensor(LABELS), 0.0)
    b = losses.cross_entropy_loss(t(LOGITS), torch.tensor(LABELS))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("kl_weight", [0.0, 1.0, 2.5])
def test_co_refining_loss_formula(kl_weight):
    lp = log_softmax(LOGITS)
    q = np.exp(log_softmax(PEER))
    hard = -lp[np.arange(3), PEER.argmax(axis=1)]
    soft = -(q * lp).sum(axis=1)
    expected = hard.mean() + kl_weight * soft.mean()
    got = losses.co_refining_loss(t(LOGITS), t(PEER), kl_weight).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_selective_consistency_masks_disagreeing_samples_per_sample():
    lp = log_softmax(LOGITS)
    q = np.exp(log_softmax(PEER))
    agree = LOGITS.argmax(axis=1) == PEER.argmax(axis=1)
    assert agree.tolist() == [False, True, False]  # the fixture tests both cases
    hard = -lp[np.arange(3), PEER.argmax(axis=1)] * agree
    expected = hard.mean() + (-(q * lp).sum(axis=1)).mean()
    got = losses.co_refining_loss(t(LOGITS), t(PEER), 1.0, selective=True).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_co_refining_sends_no_gradient_into_the_peer():
    logits, peer = t(LOGITS).requires_grad_(), t(PEER).requires_grad_()
    losses.co_refining_loss(logits, peer).backward()
    assert peer.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_next_lambda():
    assert losses.next_lambda(0.0) == 1.0
    assert losses.next_lambda(3.0) == pytest.approx(0.25)


def test_the_loss_mixture_recovers_a_known_fraction_whatever_the_sample_order():
    rng = np.random.default_rng(0)
    for fraction in (0.2, 0.5):
        noisy = rng.random(2000) < fraction
        values = np.where(noisy, rng.normal(4.0, 0.8, 2000), rng.normal(1.0, 0.5, 2000))
        weights, means, stds = losses.two_gaussian_mixture(values)
        assert weights.sum() == pytest.approx(1.0)
        assert means == pytest.approx([1.0, 4.0], abs=0.1)
        assert stds == pytest.approx([0.5, 0.8], abs=0.1)
        estimate = losses.estimate_noise_rate(values)
        assert estimate["forget_rate_estimate"] == pytest.approx(noisy.mean(), abs=0.02)
        assert estimate["clean_mean_loss"] == pytest.approx(1.0, abs=0.1)
        assert estimate["noisy_mean_loss"] == pytest.approx(4.0, abs=0.1)
        assert losses.estimate_noise_rate(rng.permutation(values)) == estimate  # bit for bit
    assert losses.estimate_noise_rate(np.full(10, 2.0))["forget_rate_estimate"] == 0.0
