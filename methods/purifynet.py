"""PurifyNet (Ye & Yuen, TIFS 2020; the released repository's second method): one network, two
stages of --epochs each in one run. Stage 1: SELF's loss with a ramped lambda (capped at 0.5).
Stage 2: a fresh optimiser and a fresh schedule; the stage-1 network's predicted class of every
training image becomes its label, weighted by a Beta pdf of its distance to its noisy class's
mean feature."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

import losses
from core_reid.utils import UserError, check_number
from methods.base import RunAccess, step_decay
from methods.self_refining import SelfRefining


class PurifyNet(SelfRefining):
    """PurifyNet: stage 1 refines labels with a ramped lambda, stage 2 trains on the stage-1
    network's predicted labels, each sample weighted by how typical it is of its noisy class.

    ``--purify_stage`` 'both' (one run: stage 1, then stage 2 from its last or best network),
    '1', or '2' (the network starts from ``--stage1_checkpoint``). Each stage has ``--epochs``
    epochs, numbered on from one stage to the next, and its own learning-rate schedule.
    ``--stage2_view``: stage 2's labels are the argmax of the mirrored image's logits
    ('flipped', the released extractor's) or of the image's own ('plain')."""
    name = "purifynet"
    title = "PurifyNet"
    script = "train_self.py"
    summary = ("PurifyNet (the released repository's second method), two stages of --epochs "
               "epochs each in one run (default 41 + 41, --milestones 19 39 per stage: the "
               "released StepLR(20) under PyTorch >= 1.1; see docs/methods.md)")
    # The released stage: 41 epochs, StepLR(step_size=20) stepped at the start of each epoch,
    # which under PyTorch >= 1.1 decays before epochs 19 and 39 of the stage.
    defaults = {"epochs": 41, "milestones": [19, 39]}
    fixed_on_resume = ("epochs", "milestones", "purify_stage", "ramp_epochs", "beta_shape",
                       "stage2_from", "stage1_checkpoint", "stage2_view")
    # before --stage2_view, stage 2's labels came from the image's own logits
    fixed_before_flag = {"stage2_view": "plain"}
    uses_train_test_view = True  # stage 2's descriptors and predicted classes

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.stages, self.ramp_epochs = args.purify_stage, args.ramp_epochs
        self.beta_shape, self.stage2_from = tuple(args.beta_shape), args.stage2_from
        self.stage2_view = args.stage2_view
        # the first epoch of stage 2 (None: stage 1 alone)
        self.stage2_start = {"both": args.epochs, "1": None, "2": 0}[self.stages]
        if self.stages == "2":
            self.init_checkpoints = ("--stage1_checkpoint", [args.stage1_checkpoint])
        self.lambdas = [None]  # begin_epoch sets it from the ramp
        self.targets: Optional[np.ndarray] = None   # stage 2's labels, in sample order
        self.weights: Optional[np.ndarray] = None   # and their weights
        self.summary_stats: dict[str, Optional[float]] = {}  # their label diagnostics
        self._on_device: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--purify_stage", default="both", choices=["both", "1", "2"],
          help="'both' stages in one run, stage '1' alone, or stage '2' alone from "
          "--stage1_checkpoint")
        a("--stage1_checkpoint", default=None, metavar="PATH",
          help="--purify_stage 2: the stage-1 network to start from (the last.pt or best.pt of "
          "a --purify_stage 1 run)")
        a("--ramp_epochs", type=int, default=60,
          help="stage 1: lambda = min(exp(-2 (1 - min(epoch, N)/N)^2), 0.5) (the released "
          "--LabelWt: 60)")
        a("--beta_shape", type=float, nargs=2, default=[2.0, 6.0], metavar=("ALPHA", "BETA"),
          help="stage 2: sample weight = Beta(ALPHA, BETA) pdf of the normalised distance to "
          "the class mean feature (released: 2 6)")
        a("--stage2_from", default="last", choices=["last", "best"],
          help="stage 2 starts from stage 1's 'last' network (no test-set information enters "
          "training) or its 'best' by test rank-1 (the released script)")
        a("--stage2_view", default="flipped", choices=["flipped", "plain"],
          help="stage 2: each training image's label is the argmax of the logits of "
          "'flipped' = its mirror, test transform (the released extractor, through a reused "
          "loop variable) or 'plain' = the image itself")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        check_number("--ramp_epochs", args.ramp_epochs, args.ramp_epochs >= 0,
                     ">= 0 (released: 60)")
        check_number("--beta_shape", min(args.beta_shape), min(args.beta_shape) > 0,
                     "two numbers > 0 (released: 2 6)")
        if args.purify_stage == "2":
            if args.stage1_checkpoint is None or not Path(args.stage1_checkpoint).is_file():
                raise UserError(f"--purify_stage 2 needs --stage1_checkpoint, the last.pt or "
                                f"best.pt of a --purify_stage 1 run (got: "
                                f"{args.stage1_checkpoint or 'none'}: no such file)")
            if args.stage2_from != "last":
                raise UserError(f"--stage2_from {args.stage2_from} with --purify_stage 2: "
                                "stage 2 starts from --stage1_checkpoint; pass that run's "
                                "best.pt there")
        elif args.stage1_checkpoint is not None:
            raise UserError(f"--stage1_checkpoint {args.stage1_checkpoint} is read by "
                            "--purify_stage 2 only: add --purify_stage 2, or drop it")
        elif args.purify_stage == "1" and args.stage2_from != "last":
            raise UserError(f"--stage2_from {args.stage2_from} with --purify_stage 1: there is "
                            "no stage 2 in this run; drop it")
        elif args.purify_stage == "1" and args.stage2_view != "flipped":
            raise UserError(f"--stage2_view {args.stage2_view} with --purify_stage 1: there is "
                            "no stage 2 in this run; drop it")

    def lr_schedule(self, args: argparse.Namespace) -> np.ndarray:
        """Each stage its own step decay over --epochs: stage 2 restarts at the large rate."""
        stage = step_decay(args.lr, args.milestones, args.epochs)
        return np.concatenate([stage, stage]) if self.stages == "both" else stage

    def in_stage2(self, epoch: int) -> bool:
        return self.stage2_start is not None and epoch >= self.stage2_start

    def stage(self, epoch: int) -> str:
        return "stage 2" if self.in_stage2(epoch) else "stage 1"

    def ends_stage(self, epoch: int) -> bool:
        return self.stages == "both" and epoch == self.stage2_start - 1

    def uses_lambda(self, epoch: int) -> bool:
        return not self.in_stage2(epoch)

    def end_epoch(self, epoch: int, mean_loss: list[float]) -> None:
        """Nothing: the ramp, not the loss, sets lambda (begin_epoch)."""

    def begin_epoch(self, run: RunAccess, epoch: int) -> list[str]:
        if not self.in_stage2(epoch):
            self.lambdas = [losses.ramped_lambda(epoch, self.ramp_epochs)]
            return []
        if epoch != self.stage2_start:
            return []
        notes = [run.load_best()] if self.stage2_from == "best" and self.stages == "both" \
            else []
        run.reset_optimizers()
        self.lambdas = [None]
        features, predicted = run.train_outputs(run.peers[0].net, self.stage2_view)
        labels = run.labels
        self.targets = predicted.astype(np.int64)
        self.weights = losses.beta_weights(features, labels.noisy_labels, run.num_classes,
                                           self.beta_shape).astype(np.float32)
        self._on_device = None
        noisy = ~labels.is_clean
        self.summary_stats = {
            "train_label_precision": float((self.targets == labels.clean_labels).mean()),
            "mean_weight_clean": float(self.weights[labels.is_clean].mean())
            if labels.is_clean.any() else None,
            "mean_weight_noisy": float(self.weights[noisy].mean()) if noisy.any() else None}
        s = self.summary_stats
        return notes + [
            f"stage 2 starts at epoch {epoch}: fresh optimiser; labels = the network's "
            f"predictions, {self.stage2_view} view (label precision "
            f"{s['train_label_precision']:.3f}), Beta"
            f"{self.beta_shape} weights: mean {self.weights.mean():.3f} (clean samples "
            + (f"{s['mean_weight_clean']:.3f}" if s["mean_weight_clean"] is not None else "-")
            + ", noisy " + (f"{s['mean_weight_noisy']:.3f}" if s["mean_weight_noisy"]
                            is not None else "-") + ")"]

    def batch_losses(self, epoch, logits, labels, index):
        if not self.in_stage2(epoch):
            return super().batch_losses(epoch, logits, labels, index)
        if self._on_device is None:
            self._on_device = (torch.as_tensor(self.targets, device=labels.device),
                               torch.as_tensor(self.weights, device=labels.device))
        targets, weights = self._on_device
        index = index.to(labels.device)
        return [losses.instance_weighted_loss(out, targets[index], weights[index])
                for out in logits]

    def extra_stats(self, epoch: int, k: int) -> dict[str, Any]:
        return dict(self.summary_stats) if self.in_stage2(epoch) else {}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "targets": self.targets, "weights": self.weights,
                "summary": self.summary_stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.targets, self.weights = state["targets"], state["weights"]
        self.summary_stats, self._on_device = state["summary"], None
