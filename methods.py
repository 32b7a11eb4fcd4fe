"""What each method adds to the shared loop: how many networks, which loss in which epoch,
SELF's weight lambda and CORE's stage switch. The formulas themselves are in losses.py, the
loop in core_reid/engine.py.

- baseline: one network, cross-entropy on the noisy labels.
- SELF: one network, ``-(1 - lam) log p[y] - lam log max p``; lam = 1 / (1 + last epoch's
  mean loss), 0 in the first epoch.
- CORE: two peers on the same batches; SELF (each its own lam) for epochs <= stage1_epochs
  (the released code: 20), then co-refining: each learns from the other's refined label and
  distribution.
- PurifyNet (Ye & Yuen, TIFS 2020; the released repository's second method): one network, two
  stages of --epochs each in one run. Stage 1: SELF's loss with a ramped lambda (capped at
  0.5). Stage 2: fresh optimiser; the stage-1 network's predicted class of every training image
  becomes its label, weighted by a Beta pdf of its distance to its noisy class's mean feature.
- Co-teaching (Han et al., NeurIPS 2018): two networks on the same batches; each keeps the
  small-loss fraction of the batch and its peer trains on it. The fraction dropped: the true
  noise rate, or (``--forget_rate auto``) the rate estimated from the training losses.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

import losses
from datasets.noise import NoisyLabels

METHODS = ("baseline", "self", "core", "purifynet", "coteaching")
PAPER_METHODS = ("baseline", "self", "core")  # the CORE paper's comparison


@dataclass
class Peer:
    """One network with its optimiser and its SELF weight lambda (None: no lambda)."""
    net: torch.nn.Module          # the ReIDNet (state dict, pool5)
    model: torch.nn.Module        # what the loop calls: ``net`` or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    lam: Optional[float] = None


@dataclass
class RunAccess:
    """What a method may ask of the run it trains in (the engine provides it)."""
    peers: list[Peer]
    labels: NoisyLabels
    num_classes: int
    device: torch.device
    # (descriptor, predicted class) of every training image, in sample order: test transform,
    # eval mode; the class from the logits of the view named ('flipped' or 'plain')
    train_outputs: Callable[[torch.nn.Module, str], tuple[np.ndarray, np.ndarray]]
    load_best: Callable[[], str]         # the run's best.pt networks into the peers; a log note
    reset_optimizers: Callable[[], None]  # fresh SGD (no momentum) for every peer
    # class logits of every training image, in sample order: eval mode, no augmentation
    train_logits: Callable[[torch.nn.Module], torch.Tensor]


class Baseline:
    """Plain cross-entropy on the annotated (noisy) labels. The hooks below are what the loop
    asks every method; their defaults are the plain one-stage run's."""
    name = "baseline"
    networks = 1
    first_lambda: Optional[float] = None
    # (flag, checkpoints) the networks start from, when a run starts
    init_checkpoints: Optional[tuple[str, list[str]]] = None
    fixed_on_resume: tuple[str, ...] = ()  # flags a resumed run may not change
    uses_train_test_view = False  # reads the training images through the test transform

    def stage(self, epoch: int) -> str:
        return "baseline"

    def total_epochs(self, epochs: int) -> int:
        """Epochs in a run of ``--epochs`` epochs."""
        return epochs

    def schedule_epoch(self, epoch: int) -> int:
        """The epoch the learning-rate schedule (``--milestones``) sees."""
        return epoch

    def ends_stage(self, epoch: int) -> bool:
        """Whether ``epoch`` ends a stage before the last (then network 1 is tested)."""
        return False

    def setup(self, run: RunAccess) -> None:
        """Once per process, before the first epoch trained (also when resuming)."""

    def begin_epoch(self, epoch: int, run: RunAccess) -> list[str]:
        """Before an epoch trains (not when a resumed run continues one mid-way: what this
        changed is in the checkpoint); returns lines for the log."""
        return []

    def batch_losses(self, epoch: int, logits: Sequence[torch.Tensor], labels: torch.Tensor,
                     index: torch.Tensor, peers: Sequence[Peer]) -> list[torch.Tensor]:
        """Each network's loss on one batch (``index``: the batch's sample numbers)."""
        return [losses.cross_entropy_loss(out, labels) for out in logits]

    def extra_stats(self, epoch: int, k: int) -> dict[str, float]:
        """Network ``k``'s method-specific label diagnostics for the epoch just trained."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the method carries from epoch to epoch, for the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def next_lambda(self, mean_epoch_loss: float) -> Optional[float]:
        return None

    def uses_lambda(self, epoch: int) -> bool:
        """Whether this epoch's loss has lambda in it (only then is it recorded)."""
        return False

    def schedule_warnings(self, milestones: Sequence[int], epochs: int) -> list[str]:
        return []


class SelfRefining(Baseline):
    """SELF: the annotated label and the network's own prediction, weighted by lambda."""
    name = "self"
    first_lambda = 0.0

    def stage(self, epoch: int) -> str:
        return "SELF"

    def batch_losses(self, epoch, logits, labels, index, peers):
        return [losses.self_refining_loss(out, labels, p.lam) for out, p in zip(logits, peers)]

    def next_lambda(self, mean_epoch_loss: float) -> Optional[float]:
        return losses.next_lambda(mean_epoch_loss)

    def uses_lambda(self, epoch: int) -> bool:
        return self.stage(epoch) == "SELF"


class CoRefining(SelfRefining):
    """CORE: two peers, SELF for epochs <= stage1_epochs, then online co-refining."""
    name = "core"
    networks = 2

    def __init__(self, stage1_epochs: int, kl_weight: float, selective: bool):
        self.stage1_epochs, self.kl_weight, self.selective = stage1_epochs, kl_weight, selective

    def stage(self, epoch: int) -> str:
        return "SELF" if epoch <= self.stage1_epochs else "co-refining"

    def batch_losses(self, epoch, logits, labels, index, peers):
        if self.stage(epoch) == "SELF":
            return super().batch_losses(epoch, logits, labels, index, peers)
        first, second = logits
        return [losses.co_refining_loss(first, second, self.kl_weight, self.selective),
                losses.co_refining_loss(second, first, self.kl_weight, self.selective)]

    def schedule_warnings(self, milestones: Sequence[int], epochs: int) -> list[str]:
        """Co-refining that starts at the large learning rate can collapse both peers."""
        first_co = self.stage1_epochs + 1
        if first_co >= epochs or not milestones or first_co >= milestones[0]:
            return []
        return [f"warning: co-refining starts at epoch {first_co}, before the first learning-"
                f"rate decay (epoch {milestones[0]}): at the large learning rate both peers "
                "can collapse onto a few classes (label precision near 0 on our test data). "
                "The released schedule starts it after the decay (--stage1_epochs 20, "
                "--milestones 20 50); set --stage1_epochs >= first milestone - 1"]


class PurifyNet(SelfRefining):
    """PurifyNet: stage 1 refines labels with a ramped lambda, stage 2 trains on the stage-1
    network's predicted labels, each sample weighted by how typical it is of its noisy class.

    ``stages`` 'both' (one run: stage 1, then stage 2 from its last or best network), '1', or
    '2' (the network starts from ``stage1_checkpoint``). Each stage has ``stage_epochs``
    epochs, numbered on from one stage to the next, and its own learning-rate schedule.
    ``stage2_view``: stage 2's labels are the argmax of the mirrored image's logits
    ('flipped', the released extractor's) or of the image's own ('plain')."""
    name = "purifynet"
    first_lambda = None  # set by begin_epoch from the ramp
    fixed_on_resume = ("epochs", "milestones", "purify_stage", "ramp_epochs", "beta_shape",
                       "stage2_from", "stage1_checkpoint", "stage2_view")
    uses_train_test_view = True  # stage 2's descriptors and predicted classes

    def __init__(self, stage_epochs: int, stages: str, ramp_epochs: int,
                 beta_shape: Sequence[float], stage2_from: str,
                 stage1_checkpoint: Optional[str], stage2_view: str = "flipped"):
        self.stage_epochs, self.stages, self.ramp_epochs = stage_epochs, stages, ramp_epochs
        self.beta_shape, self.stage2_from = tuple(beta_shape), stage2_from
        self.stage2_view = stage2_view
        # the first epoch of stage 2 (None: stage 1 alone)
        self.stage2_start = {"both": stage_epochs, "1": None, "2": 0}[stages]
        if stages == "2":
            self.init_checkpoints = ("--stage1_checkpoint", [stage1_checkpoint])
        self.targets: Optional[np.ndarray] = None   # stage 2's labels, in sample order
        self.weights: Optional[np.ndarray] = None   # and their weights
        self.summary: dict[str, float] = {}          # their label diagnostics
        self._on_device: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def in_stage2(self, epoch: int) -> bool:
        return self.stage2_start is not None and epoch >= self.stage2_start

    def stage(self, epoch: int) -> str:
        return "stage 2" if self.in_stage2(epoch) else "stage 1"

    def total_epochs(self, epochs: int) -> int:
        return 2 * epochs if self.stages == "both" else epochs

    def schedule_epoch(self, epoch: int) -> int:
        return epoch - self.stage2_start if self.in_stage2(epoch) else epoch

    def ends_stage(self, epoch: int) -> bool:
        return self.stages == "both" and epoch == self.stage2_start - 1

    def uses_lambda(self, epoch: int) -> bool:
        return not self.in_stage2(epoch)

    def next_lambda(self, mean_epoch_loss: float) -> Optional[float]:
        return None  # the ramp, not the loss, sets it (begin_epoch)

    def begin_epoch(self, epoch: int, run: RunAccess) -> list[str]:
        if not self.in_stage2(epoch):
            for p in run.peers:
                p.lam = losses.ramped_lambda(epoch, self.ramp_epochs)
            return []
        if epoch != self.stage2_start:
            return []
        notes = [run.load_best()] if self.stage2_from == "best" and self.stages == "both" \
            else []
        run.reset_optimizers()
        for p in run.peers:
            p.lam = None
        features, predicted = run.train_outputs(run.peers[0].net, self.stage2_view)
        labels = run.labels
        self.targets = predicted.astype(np.int64)
        self.weights = losses.beta_weights(features, labels.noisy_labels, run.num_classes,
                                           self.beta_shape).astype(np.float32)
        self._on_device = None
        noisy = ~labels.is_clean
        self.summary = {
            "train_label_precision": float((self.targets == labels.clean_labels).mean()),
            "mean_weight_clean": float(self.weights[labels.is_clean].mean())
            if labels.is_clean.any() else None,
            "mean_weight_noisy": float(self.weights[noisy].mean()) if noisy.any() else None}
        s = self.summary
        return notes + [
            f"stage 2 starts at epoch {epoch}: fresh optimiser; labels = the network's "
            f"predictions, {self.stage2_view} view (label precision "
            f"{s['train_label_precision']:.3f}), Beta"
            f"{self.beta_shape} weights: mean {self.weights.mean():.3f} (clean samples "
            + (f"{s['mean_weight_clean']:.3f}" if s["mean_weight_clean"] is not None else "-")
            + ", noisy " + (f"{s['mean_weight_noisy']:.3f}" if s["mean_weight_noisy"]
                            is not None else "-") + ")"]

    def batch_losses(self, epoch, logits, labels, index, peers):
        if not self.in_stage2(epoch):
            return super().batch_losses(epoch, logits, labels, index, peers)
        if self._on_device is None:
            self._on_device = (torch.as_tensor(self.targets, device=labels.device),
                               torch.as_tensor(self.weights, device=labels.device))
        targets, weights = self._on_device
        index = index.to(labels.device)
        return [losses.instance_weighted_loss(out, targets[index], weights[index])
                for out in logits]

    def extra_stats(self, epoch: int, k: int) -> dict[str, float]:
        return dict(self.summary) if self.in_stage2(epoch) else {}

    def state_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "weights": self.weights, "summary": self.summary}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.targets, self.weights = state["targets"], state["weights"]
        self.summary, self._on_device = state["summary"], None


class CoTeaching(Baseline):
    """Co-teaching: two networks on the same batches; each ranks the batch by its own
    cross-entropy on the noisy labels, keeps the ``1 - r(t)`` fraction with the smallest, and
    the *other* network trains on those. r(t) = tau * min(t / forget_epochs, 1), tau =
    ``forget_rate``, or with 'auto' the noise rate estimated from the training losses before
    each epoch t of the ramp (1 <= t <= forget_epochs; epoch 0 drops nothing whatever tau)
    and kept from then on; the last estimate is in the method's state."""
    name = "coteaching"
    networks = 2
    fixed_on_resume = ("forget_rate", "forget_epochs")

    def __init__(self, forget_rate: Union[float, str], forget_epochs: int):
        self.auto = forget_rate == "auto"
        self.tau: Optional[float] = None if self.auto else float(forget_rate)
        self.estimate: Optional[dict[str, float]] = None  # 'auto': what the estimate found
        self.forget_epochs = forget_epochs
        self.is_clean: Optional[torch.Tensor] = None
        # per network: [samples it selected, noisy samples among them] in this epoch
        self.counts: Optional[torch.Tensor] = None

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

    def begin_epoch(self, epoch: int, run: RunAccess) -> list[str]:
        self.counts.zero_()
        if not self.auto or epoch == 0 or epoch > self.forget_epochs:
            return []
        self.estimate = estimate_forget_rate(run)
        self.tau = self.estimate["forget_rate_estimate"]
        return [f"forget rate estimated at epoch {epoch} from the training losses: tau = "
                f"{self.tau:.3f} (loss mixture: {self.estimate['clean_mean_loss']:.3f} / "
                f"{self.estimate['noisy_mean_loss']:.3f} mean per-sample loss, clean / noisy "
                f"component)"]

    def batch_losses(self, epoch, logits, labels, index, peers):
        first, second, chosen1, chosen2 = losses.co_teaching_losses(
            logits[0], logits[1], labels, self.drop_rate(epoch))
        noisy = ~self.is_clean[index.to(self.is_clean.device)]
        with torch.no_grad():
            for k, chosen in enumerate((chosen1, chosen2)):
                self.counts[k, 0] += len(chosen)
                self.counts[k, 1] += noisy[chosen.to(noisy.device)].sum()
        return [first, second]

    def extra_stats(self, epoch: int, k: int) -> dict[str, float]:
        """Network k: the noisy fraction of what it selected for its peer, and the label
        precision of what it trained on (what its peer selected)."""
        counts = self.counts.tolist()
        noisy_fraction = [n / total if total else 0.0 for total, n in counts]
        return {"forget_rate": self.drop_rate(epoch), "tau": self.tau,
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


def estimate_forget_rate(run: RunAccess) -> dict[str, float]:
    """Co-teaching's (or any small-loss method's) tau from the training data alone: the noise
    rate ``losses.estimate_noise_rate`` finds in the per-sample cross-entropy on the annotated
    labels, averaged over the run's networks (eval mode, no augmentation)."""
    noisy = torch.as_tensor(run.labels.noisy_labels, device=run.device)
    per_sample = torch.stack([
        torch.nn.functional.cross_entropy(run.train_logits(p.net), noisy, reduction="none")
        for p in run.peers]).mean(dim=0)
    return losses.estimate_noise_rate(per_sample.cpu().numpy())


def make_method(name: str, args: argparse.Namespace) -> Baseline:
    """The method object for ``name``, with its flags (CORE: --stage1_epochs, --kl_weight,
    --selective, --init_from; PurifyNet: --purify_stage, --ramp_epochs, --beta_shape, --stage2_from,
    --stage1_checkpoint, --stage2_view; Co-teaching: --forget_rate, --forget_epochs)."""
    if name == "core":
        core = CoRefining(args.stage1_epochs, args.kl_weight, args.selective)
        if getattr(args, "init_from", None):
            core.init_checkpoints = ("--init_from", list(args.init_from))
        return core
    if name == "purifynet":
        return PurifyNet(args.epochs, args.purify_stage, args.ramp_epochs, args.beta_shape,
                         args.stage2_from, args.stage1_checkpoint, args.stage2_view)
    if name == "coteaching":
        return CoTeaching(args.forget_rate, args.forget_epochs)
    return {"baseline": Baseline, "self": SelfRefining}[name]()
