"""The training loop shared by train_self.py and train_core.py.

One run trains one network (baseline, SELF, PurifyNet) or two peers on the same batches (CORE,
Co-teaching) on labels with injected noise, and tests network 1 every ``--eval_every`` epochs
(and at the end of each stage). ``train`` reads top to
bottom: setup (device and numerics, data, noise, networks, run folder), the epochs, the final
report. What each method adds is in methods/ (the loop calls its hooks, never its name), the
flags in options.py, the run's state object in run_state.py, run folders and checkpoints in
runs.py, the data and the noise in run_data.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from datasets.noise import save_noise
from datasets.pipeline import epoch_seed
from eval_utils import score, test_features
from methods import METHODS, Method, Peer
from model import build_model, matmul_single_position_convs
from core_reid.audit import refined_labels
from core_reid.fast_path import check_fast_path
from core_reid.numerics import (Numerics, apply_tf32, choose_numerics, describe_environment,
                      numerics_record, pick_device, set_threads)
from core_reid.pictures import label_correction_picture, sampled_ranked_list
from core_reid.pretraining import describe_record, initial_backbone, resumed_record
from core_reid.recorder import TEST_KEYS, RunRecorder
from core_reid.run_data import (describe_annotations, inject_noise, load_data, noise_meta,
                      predicted_labels, prepare_synthetic_data)
from core_reid.run_state import RunState, make_optimizer
from core_reid.runs import (NOISE_FILE, EpochProgress, StopSignals, check_metrics_file,
                  checkpoint_labels, copy_checkpoint, discard_if_unfinished, init_peers_from,
                  load_for_resume, resolve_run, restore_peers, restore_rng_states, run_name,
                  saved_method_state, save_checkpoint)
from core_reid.utils import FolderLock, RunInterrupted, UserError

# What label_diagnostics returns for each network (None in an epoch without diagnostics).
LABEL_DIAGNOSTICS = ("label_precision", "label_precision_clean", "noisy_corrected",
                     "noisy_memorized")
# Queries in the ranked-list picture of each test (TensorBoard): the same ones every time.
RANKED_LIST_QUERIES = 4


def build_peers(args: argparse.Namespace, method: Method, num_classes: int,
                device: torch.device, numerics: Numerics,
                weights: Optional[dict] = None) -> list[Peer]:
    """The method's networks and their SGD optimisers, initialised one after the other from
    one ``--seed`` (as released: ``torch.manual_seed(seed)``, then network 1, then network 2)."""
    peers = []
    torch.manual_seed(args.seed)
    for _ in range(method.networks):
        net = build_model(args.arch, num_classes, weights, args.head_act, args.dropout)
        net = net.to(device, memory_format=numerics.memory_format)
        if numerics.matmul_convs:
            matmul_single_position_convs(net, args.img_size)
        model = torch.compile(net) if numerics.compile else net
        peers.append(Peer(net, model, make_optimizer(args, net, numerics)))
    return peers


def train_one_epoch(run: RunState, epoch: int,
                    stop_requested: Callable[[], bool] = lambda: False,
                    resume: Optional[tuple[EpochProgress, dict]] = None) -> EpochProgress:
    """Train every peer on the same batches: summed loss and training accuracy (against the
    annotated labels) per network accumulate on the device and are read once at the end (no
    per-step host sync). Before each step, ``stop_requested()`` may end the epoch early
    (``finished`` False); ``resume`` = (progress, generator states) continues such an epoch."""
    method, peers, data, numerics, noisy = run.method, run.peers, run.data, run.numerics, \
        run.noisy
    for p in peers:
        p.model.train()
    device = noisy.device
    seed = epoch_seed(run.args.seed, epoch)
    torch.manual_seed(seed)  # dropout; the batches draw from the same seed
    done = resume[0] if resume else EpochProgress(0, [0.0] * len(peers), [0] * len(peers), 0,
                                                  0.0)
    loss_sum = torch.tensor(done.loss_sum, device=device)
    correct = torch.tensor(done.correct, device=device, dtype=torch.long)
    seen, start = done.seen, time.time() - done.seconds
    bar = tqdm(data.train.batches(seed), total=len(data.train), leave=False, disable=None,
               desc=f"epoch {epoch}", unit="batch")

    def progress(step: int, finished: bool) -> EpochProgress:
        return EpochProgress(step, loss_sum.tolist(), correct.tolist(), seen,
                             time.time() - start, finished)

    for step, (images, index) in enumerate(bar):
        if step < done.step:  # already trained before the interruption: the same batches
            continue
        if resume and step == done.step:
            restore_rng_states(resume[1])  # dropout goes on where it stopped
        if stop_requested():
            bar.close()
            return progress(step, finished=False)
        if len(index) < 2:  # BatchNorm cannot train on a single sample
            continue
        images = images.contiguous(memory_format=numerics.memory_format)
        labels = noisy[index]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=numerics.amp):
            logits = [p.model(images) for p in peers]
        batch_losses = method.batch_losses(epoch, logits, labels, index)
        for p in peers:
            p.optimizer.zero_grad(set_to_none=True)
        torch.stack(batch_losses).sum().backward()  # one backward: each loss reaches its nets
        method.after_backward(run, epoch, step)
        for p in peers:
            p.optimizer.step()
        method.after_step(run, epoch, step)
        with torch.no_grad():
            preds = torch.stack([out.argmax(dim=1) for out in logits])
            loss_sum += torch.stack([loss.detach() for loss in batch_losses]) * len(index)
            correct += (preds == labels).sum(dim=1)
        seen += len(index)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum[0].item() / seen:.3f}",
                            acc=f"{correct[0].item() / seen:.3f}",
                            img_s=f"{seen / (time.time() - start):.0f}")
    bar.close()
    return progress(len(data.train), finished=True)


def label_diagnostics(refined: np.ndarray, true: np.ndarray, noisy: np.ndarray,
                      is_clean: np.ndarray) -> dict[str, Optional[float]]:
    """How good a network's refined labels are, which we can tell because we injected the noise.

    ``refined`` is the network's prediction (eval mode, no augmentation) for each training
    sample, after the epoch.
    label_precision: refined label == true label, over all samples; label_precision_clean: the
    same over originally clean samples; noisy_corrected: over originally noisy samples (the
    fraction of wrong labels the network has corrected); noisy_memorized: originally noisy
    samples whose refined label is still the wrong annotated one.
    """
    right = refined == true
    noisy_mask = ~is_clean
    mean_or_none = lambda x: float(x.mean()) if x.size else None  # noqa: E731
    return {"label_precision": float(right.mean()),
            "label_precision_clean": mean_or_none(right[is_clean]),
            "noisy_corrected": mean_or_none(right[noisy_mask]),
            "noisy_memorized": mean_or_none((refined == noisy)[noisy_mask])}


def annotation_diagnostics(refined: list[np.ndarray], annotated: np.ndarray
                           ) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Without injected noise the annotations are all we know, so nothing is scored against
    them as if they were true; instead: (per network, for the run).

    disagree_with_annotation (each network): the fraction of training images whose refined
    label (its prediction, as in label_diagnostics) is not the annotated one (the label the run
    trains on). labels_changed (the method): the fraction whose refined label as the audit
    writes it (``audit.refined_labels``: one network's prediction; with two peers, their
    common prediction where they agree, else the annotation) is not the annotated one.
    """
    per_network = [{"disagree_with_annotation": float((r != annotated).mean())}
                   for r in refined]
    return per_network, {"labels_changed": float(
        (refined_labels(np.stack(refined), annotated) != annotated).mean())}


def network_statistics(run: RunState, epoch: int, progress: EpochProgress, diagnose: bool
                       ) -> tuple[list[dict[str, Any]], dict[str, Optional[float]]]:
    """Each network's epoch: loss, accuracy, what its loss used (the method's ``trained_with``,
    e.g. SELF's lambda), its label diagnostics (annotation_diagnostics when no noise was
    injected; None where ``diagnose`` is false: they cost a forward pass over the training
    images per network and change nothing the training does) and the method's own (e.g. the
    precision of what it trained on); with the run's own diagnostics."""
    labels = run.labels
    refined = [predicted_labels(p.net, run.data, run.device, run.numerics)
               for p in run.peers] if diagnose else None
    networks = []
    for k, p in enumerate(run.peers):
        stats = {"loss": progress.mean_loss[k], "train_acc": progress.train_acc[k],
                 **run.method.trained_with(epoch, k)}
        if not labels.truth_known:
            truth = {}
        elif refined is None:
            truth = dict.fromkeys(LABEL_DIAGNOSTICS)
        else:
            truth = label_diagnostics(refined[k], labels.clean_labels, labels.noisy_labels,
                                      labels.is_clean)
        networks.append({**stats, **truth, **run.method.extra_stats(epoch, k)})
    if labels.truth_known:
        return networks, {}
    per_network, run_stats = (annotation_diagnostics(refined, labels.noisy_labels)
                              if refined is not None
                              else ([{"disagree_with_annotation": None}] * len(networks),
                                    {"labels_changed": None}))
    return [{**n, **d} for n, d in zip(networks, per_network)], run_stats


def epoch_record(run: RunState, epoch: int, progress: EpochProgress
                 ) -> tuple[dict[str, Any], Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """A trained epoch's record: each network's statistics (the label diagnostics at every test
    and every --diagnostics_every epochs) and, every --eval_every epochs and at the last,
    network 1's test scores; with them, at a test, its query and gallery descriptors (for the
    ranked-list picture). A method's stage ends are tested too."""
    if not all(math.isfinite(x) for x in progress.mean_loss):
        raise UserError(f"training diverged at epoch {epoch} (loss {progress.mean_loss}); "
                        "lower --lr")
    test = epoch % run.args.eval_every == 0 or epoch == run.epochs - 1 or \
        run.method.ends_stage(epoch)
    networks, run_stats = network_statistics(
        run, epoch, progress, diagnose=test or epoch % run.args.diagnostics_every == 0)
    scores, features, data = {}, None, run.data
    if test:
        features = test_features(run.peers[0].net, data.query, data.gallery, run.device,
                                 run.numerics.amp, run.numerics.channels_last)
        scores = score(*features, data.query, data.gallery, run.args.rerank)
    return ({"epoch": epoch, "lr": float(run.lr[epoch]), "stage": run.method.stage(epoch),
             **networks[0], **run_stats, **{k: scores.get(k) for k in TEST_KEYS},
             "epoch_time_s": progress.seconds,
             "images_per_s": progress.seen / progress.seconds, "networks": networks}, features)


def train(args: argparse.Namespace, method_name: str) -> dict:
    """Train, test and save a whole run; returns metrics.json's content."""
    args.method = method_name
    set_threads(args.threads)
    method = METHODS[method_name](args)
    lr = method.lr_schedule(args)  # built once: every epoch's learning rate
    epochs = len(lr)
    device = pick_device(args)
    numerics = choose_numerics(args, device)
    if args.demo:
        prepare_synthetic_data(Path(args.data_dir), args.workers)
    run_dir, ckpt = resolve_run(args, args.run_name or run_name(args))
    fresh = ckpt is None and not run_dir.exists()
    # one writer per run folder, taken before any work so that a second one stops at once
    with FolderLock(run_dir, "a training run"), discard_if_unfinished(run_dir, fresh):
        if ckpt is None and (run_dir / "last.pt").is_file():
            raise UserError(f"{run_dir}: another process wrote this run while this one "
                            "started; rerun with --resume auto to continue it")
        state = (load_for_resume(ckpt, args, method.name, method.fixed_on_resume,
                                 method.fixed_before_flag) if ckpt else None)
        if state is not None:
            check_metrics_file(run_dir, state)
        weights, pretrained = (initial_backbone(args, train) if state is None
                               else (None, resumed_record(args, run_dir)))  # its own
        data = load_data(args, device, numerics, method.uses_train_test_view)
        numerics = dataclasses.replace(numerics, data_path=data.data_path)
        apply_tf32(numerics, device)
        numerics, data = check_fast_path(args, method, data, numerics, device, weights)

        # The noisy labels: drawn once, then carried by the checkpoints.
        labels = (checkpoint_labels(state, noise_meta(args)) if state is not None
                  else inject_noise(args, data, device))
        save_noise(run_dir / NOISE_FILE, labels.clean_labels, labels.noisy_labels,
                   labels.is_clean, labels.meta)
        peers = build_peers(args, method, data.num_classes, device, numerics, weights)
        start_epoch, init_notes, partial = 0, [], None
        if state is not None:
            start_epoch, partial = restore_peers(peers, state, data.num_classes)
            method.load_state_dict(saved_method_state(state))
        elif method.init_checkpoints:
            flag, paths = method.init_checkpoints
            init_notes = init_peers_from(paths, peers, args, data.num_classes, flag)

        environment = numerics_record(numerics, device, args.workers)
        meta = {"method": method.name, "dataset": args.dataset, **labels.meta,
                "args": vars(args), "epochs": epochs,
                "realised_noise_rate": float(1 - labels.is_clean.mean()),
                "injected_label_precision": float((labels.noisy_labels ==
                                                   labels.clean_labels).mean())
                if labels.truth_known else None,  # no injected noise: no truth
                "pretrained": pretrained, "device": str(device), "numerics": environment,
                "run_dir": str(run_dir)}
        with RunRecorder(run_dir, meta, state["history"] if state else None) as rec, \
                StopSignals() as stop:
            run = RunState(args, method, peers, data, labels, device, numerics, lr, run_dir, rec)
            method.setup(run)
            resuming = (f"resuming at epoch {start_epoch}, step {partial[0].step}" if partial
                        else f"resuming after epoch {start_epoch - 1}")
            rec.log(f"run {run_dir}  ({resuming if state else 'new'})")
            rec.log(numerics.describe())
            rec.log(describe_environment(environment))
            rec.log(describe_record(pretrained))
            rec.log(f"{method.name} on {args.dataset}/{args.train_split}: "
                    f"{len(labels.clean_labels)} images, {data.num_classes} identities; "
                    f"{meta['noise_type']} noise {args.noise_ratio:g} (noise seed "
                    f"{args.noise_seed}, realised {meta['realised_noise_rate']:.4f}); query "
                    f"{len(data.query)}, gallery {len(data.gallery)}; {args.arch}, seed "
                    f"{args.seed}")
            if not labels.truth_known:
                rec.log(describe_annotations(labels))
            for line in init_notes + method.schedule_warnings(args):
                rec.log(line)
            if start_epoch >= epochs:
                rec.log(f"nothing to train: the run already has {start_epoch} epochs; pass a "
                        "larger --epochs to extend it")

            for epoch in range(start_epoch, epochs):
                if not (partial and epoch == start_epoch):  # else: in the checkpoint
                    for line in method.begin_epoch(run, epoch):
                        rec.log(line)
                run.set_lr(epoch)
                progress = train_one_epoch(run, epoch, stop.requested,
                                           partial if epoch == start_epoch else None)
                if not progress.finished:  # SIGTERM / SIGUSR1: save where we are, then stop
                    save_checkpoint(run, epoch - 1, progress)
                    rec.log(f"stopped by {stop.name} at epoch {epoch}, step {progress.step}: "
                            f"{run_dir / 'last.pt'} saved; continue with --resume")
                    raise RunInterrupted(f"stopped by {stop.name}; resumable: rerun the same "
                                         "command with --resume")
                record, features = epoch_record(run, epoch, progress)
                method.end_epoch(epoch, progress.mean_loss)
                rec.add_epoch(record)
                if features is not None:
                    rec.add_image("test/ranked_list", sampled_ranked_list(
                        *features, data.query, data.gallery, RANKED_LIST_QUERIES), epoch)
                save_checkpoint(run, epoch)
                if record["rank1"] is not None and rec.summary()[0]["epoch"] == epoch:
                    copy_checkpoint(run_dir / "last.pt", run_dir / "best.pt")
            for k, p in enumerate(peers if labels.truth_known else [], start=1):
                rec.add_image(f"labels/net{k}", label_correction_picture(
                    data.train_paths, labels, predicted_labels(p.net, data, device, numerics)),
                    epochs - 1)
            best, final = rec.report()
    return {**meta, "history": rec.history, "best": best, "final": final}
