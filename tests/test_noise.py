"""Label noise: bit-for-bit agreement with the released code's algorithm, and its guards."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets.folder import ReIDFolder
from datasets.noise import (load_noise, pattern_noise, random_noise, realised_noise_rate,
                            save_noise, second_labels_from_logits)
from core_reid.utils import UserError


def reference_noise(labels, ratio, num_classes, seed, relabel):
    """The released code's algorithm (docs/training.md, Label noise), written as literally as
    possible on the global generator; ``relabel(c, i)`` is the new label of chosen sample i of
    class c."""
    random.seed(seed)
    new = list(labels)
    for c in range(num_classes):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        chosen = random.sample(idx, int(np.round(len(idx) * ratio)))
        for i in chosen:
            new[i] = relabel(c, i)
    return new


def reference_random_noise(labels, ratio, num_classes, seed=1):
    return reference_noise(labels, ratio, num_classes, seed, lambda c, i: random.sample(
        list(range(c)) + list(range(c + 1, num_classes)), 1)[0])


def reference_pattern_noise(labels, ratio, second_labels, num_classes, seed=1):
    return reference_noise(labels, ratio, num_classes, seed, lambda c, i: second_labels[i])


def market_like_labels(num_classes=751, seed=0):
    """Labels in ReIDFolder order (class by class) with Market-like class sizes (2..60)."""
    sizes = np.random.default_rng(seed).integers(2, 60, size=num_classes)
    return np.repeat(np.arange(num_classes), sizes)


@pytest.fixture(scope="module")
def folder_labels(prepared_market):
    return ReIDFolder(prepared_market / "train").targets


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("seed", [1, 2, 17])
def test_random_noise_matches_reference(ratio, seed, folder_labels):
    for labels in (folder_labels, market_like_labels(200, seed)):
        num_classes = int(labels.max()) + 1
        noisy, is_clean = random_noise(labels, ratio, num_classes, seed)
        expected = reference_random_noise(labels.tolist(), ratio, num_classes, seed)
        assert noisy.dtype == np.int64 and is_clean.dtype == bool
        assert noisy.tolist() == expected
        assert is_clean.tolist() == [a == b for a, b in zip(labels.tolist(), expected)]


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=120),
       ratio=st.sampled_from([0.1, 0.2, 0.5, 0.8]), seed=st.integers(0, 10_000))
def test_random_noise_matches_reference_any_order(labels, ratio, seed):
    noisy, _ = random_noise(np.array(labels), ratio, 10, seed)
    assert noisy.tolist() == reference_random_noise(labels, ratio, 10, seed)


def test_private_generator_leaves_global_state_alone():
    random.seed(123)
    before = random.getstate()
    random_noise(market_like_labels(50), 0.5, 50)
    assert random.getstate() == before


def test_ratio_zero_changes_nothing():
    labels = market_like_labels(100)
    noisy, is_clean = random_noise(labels, 0.0, 100)
    assert np.array_equal(noisy, labels) and is_clean.all()
    assert realised_noise_rate(is_clean) == 0.0


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_ratio_out_of_range_is_user_error(ratio):
    with pytest.raises(UserError, match="ratio"):
        random_noise(market_like_labels(10), ratio, 10)
    with pytest.raises(UserError, match="ratio"):
        pattern_noise(np.array([0, 1]), ratio, np.array([1, 0]))


@pytest.mark.parametrize("labels", [[0, 1, 5], [-1, 0, 1], [[0, 1], [1, 0]]])
def test_labels_outside_classes_are_user_error(labels):
    with pytest.raises(UserError, match="labels"):
        random_noise(np.array(labels), 0.2, 5)


def test_deterministic_under_seed():
    labels = market_like_labels(100)
    first, _ = random_noise(labels, 0.2, 100, seed=5)
    again, _ = random_noise(labels, 0.2, 100, seed=5)
    other, _ = random_noise(labels, 0.2, 100, seed=6)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_realised_rate_is_close_to_ratio(ratio):
    labels = market_like_labels()
    noisy, is_clean = random_noise(labels, ratio, 751)
    assert abs(realised_noise_rate(is_clean) - ratio) < 0.02
    assert np.all(noisy[~is_clean] != labels[~is_clean])
    assert noisy.min() >= 0 and noisy.max() < 751
    # Per class, exactly round(n_c * ratio) samples change.
    for c in (0, 17, 750):
        n_c = int(np.sum(labels == c))
        assert np.sum(~is_clean[labels == c]) == int(np.round(n_c * ratio))


def test_pattern_noise_uses_second_labels():
    labels = market_like_labels(60)
    second = (labels + 1 + labels % 3) % 60
    noisy, is_clean = pattern_noise(labels, 0.5, second, seed=3)
    assert noisy.tolist() == reference_pattern_noise(labels.tolist(), 0.5, second.tolist(), 60, 3)
    assert np.array_equal(noisy[~is_clean], second[~is_clean])
    assert np.array_equal(noisy[is_clean], labels[is_clean])
    assert abs(realised_noise_rate(is_clean) - 0.5) < 0.05


def test_pattern_noise_rejects_second_labels_equal_to_true_ones():
    with pytest.raises(UserError, match="second_labels"):
        pattern_noise(np.array([0, 1, 1]), 0.5, np.array([1, 1, 0]))
    with pytest.raises(UserError, match="second_labels"):
        pattern_noise(np.array([0, 1, 1]), 0.5, np.array([1, 0]))


def test_second_labels_from_logits_rule():
    logits = np.array([[0.1, 3.0, 2.0],    # top-1 = 1 != true 0 -> 1
                       [0.1, 3.0, 2.0],    # top-1 = 1 == true 1 -> top-2 = 2
                       [5.0, 5.0, 1.0],    # tie: top-1 = 0 (lower index) == true -> 1
                       [1.0, 0.0, 9.0]])   # top-1 = 2 == true -> top-2 = 0
    true = np.array([0, 1, 0, 2])
    expected = [1, 2, 1, 0]
    assert second_labels_from_logits(logits, true).tolist() == expected
    from_torch = second_labels_from_logits(torch.tensor(logits, requires_grad=True),
                                           torch.tensor(true))
    assert from_torch.tolist() == expected and from_torch.dtype == np.int64


def test_second_labels_are_never_the_true_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 20))
    true = rng.integers(0, 20, size=500)
    second = second_labels_from_logits(logits, true)
    assert np.all(second != true)
    pattern_noise(true, 0.2, second)  # usable as patterned noise


def test_save_load_roundtrip(tmp_path):
    labels = market_like_labels(40)
    noisy, is_clean = random_noise(labels, 0.2, 40)
    path = tmp_path / "runs" / "noise.npz"
    save_noise(path, labels, noisy, is_clean, {"ratio": 0.2, "seed": 1, "kind": "random"})
    record = load_noise(path)
    assert np.array_equal(record.clean_labels, labels)
    assert np.array_equal(record.noisy_labels, noisy)
    assert np.array_equal(record.is_clean, is_clean) and record.is_clean.dtype == bool
    assert record.meta == {"ratio": 0.2, "seed": 1, "kind": "random"}
    assert record.realised_rate == realised_noise_rate(is_clean)
    assert sorted(p.name for p in path.parent.iterdir()) == ["noise.npz"]  # no temp file left


def test_load_noise_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_noise(tmp_path / "missing.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="broken.npz"):
        load_noise(broken)
