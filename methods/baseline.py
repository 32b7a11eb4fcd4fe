"""The baseline: one network, plain cross-entropy on the annotated (noisy) labels."""
from __future__ import annotations

from methods.base import Method


class Baseline(Method):
    """Everything as ``Method``'s defaults: what each other method is compared with."""
    name = "baseline"
    title = "Baseline"
    script = "train_self.py"
    summary = "plain cross-entropy on the noisy labels"
