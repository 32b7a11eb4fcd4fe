"""Label noise injected into the training labels, reproducing the released code's corruption.

Both kinds pick, class by class, ``round(n_c * ratio)`` samples of class ``c`` with Python's
``random.sample`` under one seed, so a run here corrupts exactly the images the released code
corrupts (given the same sample order, see ``datasets.folder.ReIDFolder``).
"""
from __future__ import annotations

import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core_reid.utils import UserError, atomic_write


def _check_labels(labels: Any, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be a 1-d integer array, got shape {labels.shape} "
                        f"dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"labels must lie in 0..{num_classes - 1}, got "
                        f"{labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _check_ratio(ratio: float) -> None:
    if not 0 <= ratio < 1:
        raise UserError(f"noise ratio must be in [0, 1), got {ratio}")


def _chosen_per_class(rng: random.Random, labels: np.ndarray, ratio: float, c: int) -> list[int]:
    """The reference choice for class ``c``: ``random.sample`` over its ascending indices."""
    idx = np.flatnonzero(labels == c).tolist()
    return rng.sample(idx, int(np.round(len(idx) * ratio)))


def random_noise(labels: Any, ratio: float, num_classes: int,
                 seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Give ``round(n_c * ratio)`` samples of each class a label drawn uniformly from the others.

    Returns ``(noisy_labels, is_clean)``. The draws interleave exactly as in the reference
    algorithm (choose class c's samples, relabel them, then class c + 1), so they match it bit
    for bit; a private ``random.Random(seed)`` gives the same stream as ``random.seed(seed)``.
    """
    _check_ratio(ratio)
    labels = _check_labels(labels, num_classes)
    if ratio > 0 and num_classes < 2:
        raise UserError("random label noise needs at least 2 classes")
    rng = random.Random(seed)
    noisy = labels.copy()
    for c in range(num_classes):
        other_classes = list(range(c)) + list(range(c + 1, num_classes))
        for i in _chosen_per_class(rng, labels, ratio, c):
            noisy[i] = rng.sample(other_classes, 1)[0]
    return noisy, noisy == labels


def pattern_noise(labels: Any, ratio: float, second_labels: Any,
                  seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Patterned noise: the same per-class choice, each chosen sample taking its second label.

    ``second_labels`` come from ``second_labels_from_logits`` of a network trained on clean
    labels, so the wrong labels are the confusions a real annotator would make.
    """
    _check_ratio(ratio)
    second_labels = np.asarray(second_labels)
    num_classes = int(max(np.max(labels, initial=-1), np.max(second_labels, initial=-1))) + 1
    labels = _check_labels(labels, num_classes)
    second_labels = _check_labels(second_labels, num_classes)
    if second_labels.shape != labels.shape:
        raise UserError(f"second_labels has {second_labels.size} entries but labels has "
                        f"{labels.size}; compute them on the same training set")
    if np.any(second_labels == labels):
        raise UserError("second_labels must differ from the true labels everywhere "
                        "(use second_labels_from_logits)")
    rng = random.Random(seed)
    noisy = labels.copy()
    for c in range(num_classes):
        chosen = _chosen_per_class(rng, labels, ratio, c)
        noisy[chosen] = second_labels[chosen]
    return noisy, noisy == labels


def second_labels_from_logits(logits: Any, true_labels: Any) -> np.ndarray:
    """Per sample, the top-1 class if it is not the true label, else the top-2 class.

    ``logits`` is an (N, C) numpy array or torch tensor; ties go to the lower class index.
    """
    logits = _as_numpy(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise UserError(f"logits must have shape (N, C) with C >= 2, got {logits.shape}")
    true_labels = _check_labels(_as_numpy(true_labels), logits.shape[1])
    if true_labels.shape[0] != logits.shape[0]:
        raise UserError(f"{logits.shape[0]} rows of logits but {true_labels.shape[0]} labels")
    top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    return np.where(top2[:, 0] != true_labels, top2[:, 0], top2[:, 1]).astype(np.int64)


def _as_numpy(values: Any) -> np.ndarray:
    """numpy from numpy, lists or torch tensors (on any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def realised_noise_rate(is_clean: Any) -> float:
    """Fraction of samples whose label was changed (per-class rounding moves it off ``ratio``)."""
    is_clean = np.asarray(is_clean, dtype=bool)
    return float(1.0 - is_clean.mean()) if is_clean.size else 0.0


@dataclass(frozen=True)
class NoisyLabels:
    """What a run saves so a resumed run trains on the very same corrupted labels."""
    clean_labels: np.ndarray
    noisy_labels: np.ndarray
    is_clean: np.ndarray
    meta: dict

    @property
    def realised_rate(self) -> float:
        return realised_noise_rate(self.is_clean)

    @property
    def truth_known(self) -> bool:
        """Whether ``clean_labels`` are the truth, because the noise was injected into them.
        Without injected noise they are the annotations (or ``--labels``), as trained on, and
        nothing says which of them are right."""
        return self.meta.get("noise_ratio", 0) > 0


def save_noise(path: str | Path, clean_labels: Any, noisy: Any, is_clean: Any,
               meta: dict | None = None) -> None:
    """Atomically write labels, clean mask, realised rate and JSON ``meta`` to an npz."""
    arrays = {
        "clean_labels": np.asarray(clean_labels, dtype=np.int64),
        "noisy_labels": np.asarray(noisy, dtype=np.int64),
        "is_clean": np.asarray(is_clean, dtype=bool),
        "realised_rate": np.float64(realised_noise_rate(is_clean)),
        "meta": np.array(json.dumps(meta or {}, sort_keys=True)),
    }

    def write(tmp: str) -> None:
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_noise(path: str | Path) -> NoisyLabels:
    """Read what ``save_noise`` wrote; UserError naming the file if it is missing or damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = NoisyLabels(data["clean_labels"], data["noisy_labels"],
                                 data["is_clean"].astype(bool), json.loads(str(data["meta"])))
    except FileNotFoundError:
        raise UserError(f"noise file not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read noise file {path} ({err}); delete it to draw the noise "
                        "again") from None
    shapes = {a.shape for a in (record.clean_labels, record.noisy_labels, record.is_clean)}
    if len(shapes) != 1:
        raise UserError(f"noise file {path} holds arrays of different lengths; delete it to "
                        "draw the noise again")
    return record
