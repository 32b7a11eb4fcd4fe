"""The audit of a saved run's training labels (``test.py --audit``): which annotations its
networks doubt, ranked, the labels the run has refined, and a picture of the worst suspects.

For every training image, with y its annotated label (the label the run trained on: the
dataset's annotation, the --labels file's, or the injected noisy one), each network's softmax
p_k over the training identities (eval mode, the plain view the label diagnostics use) and
p = their mean (one network: its own):

- proposed identity: argmax over c != y of p[c], the identity the networks prefer after y;
- suspicion = p[proposed] - p[y], in [-1, 1]: above 0 when the networks, together, prefer
  another identity to the annotated one; the audit ranks images by it, largest first;
- refined label: one network's prediction; with two peers (CORE, Co-teaching), their common
  prediction where they agree, else the annotation (the peers have not settled on a change).

docs/audit.md argues these choices and measures the suspicion against cleanlab. Writes
``RUN/audit/``: ``label_audit.csv`` (every training image, most suspicious first),
``refined_labels.csv`` (the manifest's form: ``train_*.py --labels`` trains on it),
``probabilities.npz`` (each network's softmax, e.g. for cleanlab) and ``suspects.png``, also
shown in the run's TensorBoard (``audit/suspects``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from datasets import DatasetInfo, get_dataset_info
from datasets.custom import manifest_paths
from datasets.split_labels import write_split_labels
from eval_utils import eval_outputs
from core_reid.checkpoint_eval import SavedRun, open_checkpoint
from core_reid.pictures import save_png, suspects_picture
from core_reid.run_data import Batches, call_model, load_training_view, noise_meta
from core_reid.runs import checkpoint_labels
from core_reid.utils import UserError, atomic_write, atomic_write_csv, check_writable_folder

AUDIT_FOLDER = "audit"


def refined_labels(predicted: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """The run's refined label of every image from its networks' predictions (networks x
    images): one network's prediction; two peers' common prediction where they agree, else
    the annotated label."""
    if len(predicted) == 1:
        return predicted[0].copy()
    agree = (predicted == predicted[0]).all(axis=0)
    return np.where(agree, predicted[0], annotated)


@dataclass
class LabelAudit:
    """The audit of N training images by K networks over C identities (class indices)."""
    annotated: np.ndarray       # (N,) the labels the run trained on
    probabilities: np.ndarray   # (K, N, C) each network's softmax
    predicted: np.ndarray       # (K, N) each network's prediction
    proposed: np.ndarray        # (N,) argmax over c != annotated of the mean probability
    suspicion: np.ndarray       # (N,) mean p[proposed] - mean p[annotated]
    refined: np.ndarray         # (N,) refined_labels
    order: np.ndarray           # (N,) sample indices, most suspicious first (ties: index)


def audit_labels(probabilities: np.ndarray, annotated: np.ndarray) -> LabelAudit:
    """The audit's definitions (the module's docstring) applied to the networks' softmax."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    rows = np.arange(len(annotated))
    mean = probabilities.mean(axis=0)
    others = mean.copy()
    others[rows, annotated] = -np.inf
    proposed = others.argmax(axis=1)
    suspicion = mean[rows, proposed] - mean[rows, annotated]
    predicted = probabilities.argmax(axis=2)
    return LabelAudit(annotated, probabilities, predicted, proposed, suspicion,
                      refined_labels(predicted, annotated),
                      np.argsort(-suspicion, kind="stable"))


def network_probabilities(net: torch.nn.Module, view: Batches, run: SavedRun) -> np.ndarray:
    """The network's softmax over the training identities for every image of ``view``
    (float64; its argmax is the run's refined label, ``run_data.predicted_labels``)."""
    logits = eval_outputs(net, view, call_model, run.device, run.numerics.amp,
                          run.numerics.channels_last, desc="training images")
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def audit_checkpoint(cli: argparse.Namespace) -> dict[str, Any]:
    """What ``test.py --audit`` does: audit the checkpoint's training labels, write RUN/audit/
    and the TensorBoard picture; returns a summary."""
    run = open_checkpoint(cli.checkpoint, cli.device, cli.gpu,
                          {"data_dir": cli.data_dir, "img_size": cli.img_size,
                           "workers": cli.workers})
    folder = run.path.parent / AUDIT_FOLDER
    check_writable_folder("--audit", folder, f"(writes {folder})")
    split, view = load_training_view(run.args, run.device, run.numerics)
    labels = checkpoint_labels(run.state, noise_meta(run.args))
    if len(labels.noisy_labels) != len(split):
        raise UserError(f"{run.path}: its {len(labels.noisy_labels)} training labels are not "
                        f"those of {split.split_dir} ({len(split)} images); point --data_dir at "
                        "the run's data")
    audit = audit_labels(np.stack([network_probabilities(run.network(k), view, run)
                                   for k in range(len(run.state["networks"]))]),
                         labels.noisy_labels)
    info = get_dataset_info(run.args.dataset, run.args.data_dir)
    truth = labels.clean_labels if labels.truth_known else None
    write_label_audit(folder / "label_audit.csv", audit, split, info, truth)
    write_split_labels(folder / "refined_labels.csv", split, info, audit.refined)
    atomic_write(folder / "probabilities.npz", lambda tmp: _save_probabilities(tmp, audit))
    picture = suspects_picture(*suspect_entries(audit, split.paths, info, split.classes,
                                                cli.suspects, truth))
    save_png(folder / "suspects.png", picture)
    _add_to_tensorboard(run.path.parent, picture, int(run.state["epoch"]))
    summary = {"checkpoint": str(run.path), "epoch": run.state["epoch"],
               "images": len(split), "networks": len(audit.predicted),
               "changed": int((audit.refined != audit.annotated).sum()),
               "doubted": int((audit.suspicion > 0).sum()), "folder": str(folder)}
    disagree = ", ".join(f"network {k + 1} {int((p != audit.annotated).sum())}"
                         for k, p in enumerate(audit.predicted))
    print(f"audited {summary['images']} training images of {split.split_dir} (epoch "
          f"{summary['epoch']}): predictions that differ from the annotation: {disagree}; "
          f"refined labels that differ: {summary['changed']}; suspicion > 0 (the networks "
          f"together prefer another identity): {summary['doubted']}")
    print(f"wrote {folder}/: label_audit.csv (most suspicious first), refined_labels.csv, "
          "probabilities.npz, suspects.png (and audit/suspects in TensorBoard)")
    print(f"retrain on the refined labels: the run's command with --labels "
          f"{folder / 'refined_labels.csv'} (and no --noise_ratio)")
    return summary


def write_label_audit(path: Path, audit: LabelAudit, split: Any, info: DatasetInfo,
                      truth: Optional[np.ndarray]) -> None:
    """label_audit.csv: one row per training image, most suspicious first. Identities are the
    annotated ids; ``path`` is relative to the CSV; an own dataset adds the manifest's path;
    a run with injected noise adds the true identity and whether the label was corrupted."""
    pids = [info.annotated_pid(name) for name in split.classes]
    sources = (manifest_paths(split.split_dir.parent) if info.identities is not None
               else None)
    two = len(audit.predicted) == 2
    header = ["rank", "suspicion", "path", *(["manifest_path"] if sources else []), "camid",
              "annotated_pid", "proposed_pid", "refined_pid", "changed"]
    for k in range(len(audit.predicted)):
        header += [f"net{k + 1}_pid", f"net{k + 1}_prob", f"net{k + 1}_prob_annotated"]
    header += (["peers_agree"] if two else []) + (["true_pid", "corrupted"]
                                                  if truth is not None else [])
    folder = os.path.abspath(path.parent)
    rows = []
    for rank, i in enumerate(audit.order, start=1):
        image = split.paths[i]
        row = [rank, f"{audit.suspicion[i]:.6f}",
               Path(os.path.relpath(os.path.abspath(image), folder)).as_posix(),
               *([sources[image.name]] if sources else []),
               info.annotated_camid(int(split.camids[i])), pids[audit.annotated[i]],
               pids[audit.proposed[i]], pids[audit.refined[i]],
               int(audit.refined[i] != audit.annotated[i])]
        for k, predicted in enumerate(audit.predicted):
            row += [pids[predicted[i]], f"{audit.probabilities[k, i, predicted[i]]:.6f}",
                    f"{audit.probabilities[k, i, audit.annotated[i]]:.6f}"]
        if two:
            row.append(int(audit.predicted[0, i] == audit.predicted[1, i]))
        if truth is not None:
            row += [pids[truth[i]], int(truth[i] != audit.annotated[i])]
        rows.append(row)
    atomic_write_csv(path, header, rows)


def suspect_entries(audit: LabelAudit, paths: list[Path], info: DatasetInfo,
                    classes: list[str], count: int, truth: Optional[np.ndarray]
                    ) -> tuple[list[tuple[Path, Optional[Path], Optional[Path], str]], str]:
    """The ``count`` most suspicious images for ``suspects_picture``: each with an image of its
    annotated identity and one of its proposed identity (each identity's least suspicious
    other image), and a caption; and the picture's title."""
    by_trust: dict[int, list[int]] = {}
    for i in np.argsort(audit.suspicion, kind="stable"):
        by_trust.setdefault(int(audit.annotated[i]), []).append(int(i))

    def example(identity: int, besides: int) -> Optional[Path]:
        return next((paths[j] for j in by_trust.get(identity, []) if j != besides), None)

    pids = [info.annotated_pid(name) for name in classes]
    entries = []
    for rank, i in enumerate(audit.order[:count], start=1):
        caption = (f"#{rank} {audit.suspicion[i]:+.2f}: {pids[audit.annotated[i]]} -> "
                   f"{pids[audit.proposed[i]]}"
                   + ("*" if audit.refined[i] != audit.annotated[i] else "")
                   + (f" true {pids[truth[i]]}" if truth is not None else ""))
        entries.append((paths[i], example(int(audit.annotated[i]), i),
                        example(int(audit.proposed[i]), i), caption))
    title = ("suspected label errors, most suspicious first: image | its annotated identity | "
             "the proposed one (* = refined to it)")
    return entries, title


def _save_probabilities(tmp: str, audit: LabelAudit) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to the name
        np.savez_compressed(f, probabilities=audit.probabilities.astype(np.float32),
                            annotated=audit.annotated)


def _add_to_tensorboard(run_dir: Path, picture: np.ndarray, epoch: int) -> None:
    from tensorboardX import SummaryWriter  # here: slow to import
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        writer.add_image("audit/suspects", picture, epoch, dataformats="HWC")
