"""A training split's labels in the manifest's form (``path,pid,camid,split``, split ``train``):
the audit writes the refined labels so (``refined_labels.csv``), ``--labels`` reads them back.

Each path is relative to the CSV and names an image of the prepared training split, so a file
is tied to the images it labels, whichever dataset they come from; pids and camids are the
annotated ones (an own dataset's own ids, a built-in one's file-name ids). Reading checks that
the file labels exactly the training split's images, each once, with identities the networks
know (one output per training identity) and the images' own cameras.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datasets import DatasetInfo
from datasets.manifest import read_manifest, write_manifest
from core_reid.utils import UserError

if TYPE_CHECKING:
    from datasets.folder import ReIDFolder


def split_rows(split: ReIDFolder, info: DatasetInfo,
               labels: np.ndarray) -> list[tuple[Path, int, int, str]]:
    """(image, annotated pid of its label, annotated camid, "train") of every image, in sample
    order; ``labels`` are class indices of ``split``."""
    pids = [info.annotated_pid(name) for name in split.classes]
    return [(path, pids[label], info.annotated_camid(int(camid)), "train")
            for path, label, camid in zip(split.paths, labels, split.camids)]


def write_split_labels(csv_path: Path, split: ReIDFolder, info: DatasetInfo,
                       labels: np.ndarray) -> None:
    """Write ``labels`` (class indices of ``split``) as a manifest-form CSV, atomically."""
    write_manifest(csv_path, split_rows(split, info, labels))


def read_split_labels(csv_path: Path, split: ReIDFolder, info: DatasetInfo) -> np.ndarray:
    """The class index each row gives its image, in sample order; UserError naming the line for
    a row of another split, an image not in the training split or given twice, an unknown
    identity or another camera, and for training images the file leaves out."""
    if not csv_path.is_file():
        raise UserError(f"--labels {csv_path}: no such file")
    where_of = {os.path.realpath(path): i for i, path in enumerate(split.paths)}
    class_of = {info.annotated_pid(name): c for c, name in enumerate(split.classes)}
    labels = np.full(len(split), -1, dtype=np.int64)
    for row in read_manifest(csv_path):
        if row.split != "train":
            raise UserError(f"{row.where}: split {row.split}; a labels file holds the training "
                            "images only (split train)")
        i = where_of.get(os.path.realpath(csv_path.parent / row.path))
        if i is None:
            raise UserError(f"{row.where}: {row.path} is not an image of the training split "
                            f"{split.split_dir}; give the labels of the images this run trains "
                            "on (the same --dataset, --data_dir and --train_split)")
        if labels[i] >= 0:
            raise UserError(f"{row.where}: {row.path} is labelled twice")
        if row.pid not in class_of:
            raise UserError(f"{row.where}: pid {row.pid} is not one of the training split's "
                            f"{len(class_of)} identities (the networks have one output per "
                            "training identity); give one of them")
        camid = info.annotated_camid(int(split.camids[i]))
        if row.camid != camid:
            raise UserError(f"{row.where}: camid {row.camid}, but {row.path} is from camera "
                            f"{camid}; a labels file changes identities only")
        labels[i] = class_of[row.pid]
    missing = np.flatnonzero(labels < 0)
    if missing.size:
        raise UserError(f"--labels {csv_path}: no row for {missing.size} of the {len(split)} "
                        f"training images of {split.split_dir}, e.g. {split.paths[missing[0]]}; "
                        "label every image of the training split (the same --train_split)")
    return labels
