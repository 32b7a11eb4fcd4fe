"""Test a saved checkpoint: score network 1, network 2, or both CORE peers (their descriptors
concatenated), on the run's own query and gallery or another dataset's, optionally re-ranked;
and draw its pictures (a ranked list, the labels each network corrected).

``test.py`` is its command line; ``benchmarks/compare_protocols.py`` reuses the loading and
scoring. The run's own settings (dataset, image size, protocol, numerics, batch size) are the
defaults, so a checkpoint scores exactly what its run logged for that epoch.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from datasets.noise import load_noise
from eval_utils import EvalSet, distances, extract_features, score
from model import matmul_single_position_convs
from core_reid.numerics import (Numerics, apply_tf32, choose_numerics, pick_device,
                                scoring_numerics)
from core_reid.options import check_data_dir, saved_args
from core_reid.pictures import label_correction_picture, pick_queries, ranked_list_picture, save_png
from core_reid.recorder import format_scores
from core_reid.run_data import RunData, load_data, load_eval_sets, predicted_labels
from core_reid.runs import NOISE_FILE, network_from_checkpoint, read_checkpoint
from core_reid.utils import UserError, atomic_write_text

NETWORKS = ("1", "2", "both")


@dataclass
class SavedRun:
    """A checkpoint and the settings to test it with: its run's flags, with the overrides."""
    path: Path
    state: dict[str, Any]
    args: argparse.Namespace
    device: torch.device
    numerics: Numerics

    def network(self, index: int) -> torch.nn.Module:
        """Network ``index`` (0 or 1) on the device, in the run's memory format and with its
        convolutions (``--matmul_convs``)."""
        net = network_from_checkpoint(self.state, index).to(
            self.device, memory_format=self.numerics.memory_format)
        if self.numerics.matmul_convs:
            matmul_single_position_convs(net, self.args.img_size)
        return net


def open_checkpoint(path: str, device: str, gpu: Optional[int],
                    overrides: dict[str, Any]) -> SavedRun:
    """Read a checkpoint; its run's flags with ``overrides`` (those not None) replacing them."""
    state = read_checkpoint(Path(path), "--checkpoint")
    args = saved_args(state["args"])
    for key, value in overrides.items():
        if value is not None:
            setattr(args, key, value)
    args.device, args.gpu = device, gpu
    check_data_dir(args)
    torch_device = pick_device(args)
    numerics, source = scoring_numerics(choose_numerics(args, torch_device),
                                        recorded_numerics(Path(path)), torch_device)
    apply_tf32(numerics, torch_device)
    print(f"scoring arithmetic ({source}): {numerics.dtype}, TF32 "
          f"{'on' if numerics.tf32 else 'off'}")
    return SavedRun(Path(path), state, args, torch_device, numerics)


def recorded_numerics(checkpoint: Path) -> Optional[dict[str, Any]]:
    """The ``numerics`` block of the metrics.json beside ``checkpoint`` (None if there is none
    or it cannot be read: the checkpoint may have been copied out of its run folder)."""
    try:
        record = json.loads((checkpoint.parent / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("numerics") if isinstance(record, dict) else None


def networks_asked(run: SavedRun, network: str) -> list[int]:
    """The network indices ``--network`` names; UserError if the checkpoint lacks one."""
    wanted = {"1": [0], "2": [1], "both": [0, 1]}[network]
    if wanted[-1] >= len(run.state["networks"]):
        raise UserError(f"--network {network}: {run.path} is a {run.state['method']} checkpoint "
                        "with one network; use --network 1")
    return wanted


def descriptors(run: SavedRun, indices: list[int], query: EvalSet,
                gallery: EvalSet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(query, gallery) descriptors of each network asked for ("net1", "net2") and, for two,
    of both: the two descriptors concatenated and L2-normalised (so the negative distance is
    the mean of the two cosine similarities)."""
    feats = {}
    for i in indices:
        net = run.network(i)
        feats[f"net{i + 1}"] = tuple(
            extract_features(net, split, run.device, run.numerics.amp,
                             run.numerics.channels_last, desc=f"network {i + 1}, {name}")
            for name, split in (("query", query), ("gallery", gallery)))
    if len(indices) == 2:
        feats["both"] = tuple(F.normalize(torch.cat([a, b], dim=1), dim=1)
                              for a, b in zip(feats["net1"], feats["net2"]))
    return feats


def default_output(run: SavedRun, primary: str, rerank: bool) -> Path:
    """Beside the checkpoint, named by what was scored: e.g. test_best_both_rerank.json."""
    parts = [f"test_{run.path.stem}", primary]
    if rerank:
        parts.append("rerank")
    if run.args.eval_protocol != "standard":
        parts.append(run.args.eval_protocol)
    if run.args.dataset != run.state["args"]["dataset"]:
        parts.append(run.args.dataset)
    return run.path.parent / ("_".join(parts) + ".json")


def write_label_pictures(run: SavedRun, data: RunData, indices: list[int], folder: Path,
                         per_section: int, seed: int) -> list[Path]:
    """labels_net<k>.png for each network, from the run's noisy_labels.npz; none for a run
    without injected noise (no truth to draw right and wrong with: --audit is its picture)."""
    noise_file = run.path.parent / NOISE_FILE
    labels = load_noise(noise_file)
    if not labels.truth_known:
        print("no label pictures: the run had no injected noise, so no truth to show the "
              "labels against; test.py --audit lists the labels its networks doubt")
        return []
    if not np.array_equal(labels.clean_labels, data.true_labels):
        raise UserError(f"{noise_file}: its {len(labels.clean_labels)} labels are not those of "
                        f"{run.args.data_dir}/{run.args.dataset}/{run.args.train_split} "
                        f"({len(data.true_labels)} images); point --data_dir at the run's data")
    written = []
    for i in indices:
        predicted = predicted_labels(run.network(i), data, run.device, run.numerics)
        written.append(folder / f"labels_net{i + 1}.png")
        save_png(written[-1], label_correction_picture(data.train_paths, labels, predicted,
                                                       per_section, seed))
    return written


def test_checkpoint(cli: argparse.Namespace) -> dict[str, Any]:
    """What test.py does: score, print, write the JSON and the pictures; returns the JSON."""
    run = open_checkpoint(cli.checkpoint, cli.device, cli.gpu,
                          {"dataset": cli.dataset, "data_dir": cli.data_dir,
                           "img_size": cli.img_size, "eval_protocol": cli.eval_protocol,
                           "workers": cli.workers})
    indices = networks_asked(run, cli.network)
    primary = "both" if cli.network == "both" else f"net{cli.network}"
    out = Path(cli.out) if cli.out else default_output(run, primary, cli.rerank)
    if cli.pictures and not (run.path.parent / NOISE_FILE).is_file():
        raise UserError(f"--pictures needs the run's {NOISE_FILE} beside the checkpoint, and "
                        f"{run.path.parent / NOISE_FILE} is missing; copy it there from the "
                        "run folder")
    data = load_data(run.args, run.device, run.numerics) if cli.pictures else None
    query, gallery = ((data.query, data.gallery) if data is not None
                      else load_eval_sets(run.args, run.device, run.numerics))
    print(f"checkpoint {run.path}: {run.state['method']}, epoch {run.state['epoch']}; "
          f"{run.args.dataset} query {len(query)}, gallery {len(gallery)}; protocol "
          f"{run.args.eval_protocol}; {'re-ranked' if cli.rerank else 'plain'} distances")
    results, primary_features = {}, None
    for name, (qf, gf) in descriptors(run, indices, query, gallery).items():
        results[name] = score(qf, gf, query, gallery, cli.rerank)
        print(f"{name:5s} {format_scores(results[name])}")
        if name == primary:
            primary_features = (qf, gf)
    payload = {"checkpoint": str(run.path), "method": run.state["method"],
               "epoch": run.state["epoch"], "dataset": run.args.dataset,
               "data_dir": run.args.data_dir, "img_size": list(run.args.img_size),
               "eval_protocol": run.args.eval_protocol, "rerank": cli.rerank,
               "numerics": {"dtype": run.numerics.dtype, "tf32": run.numerics.tf32,
                            "channels_last": run.numerics.channels_last,
                            "matmul_convs": run.numerics.matmul_convs},
               "network": cli.network, **results[primary], "scored": results}
    atomic_write_text(out, json.dumps(payload, indent=1))
    print(f"wrote {out}")
    if data is not None:
        folder = Path(cli.pictures)
        primary_distmat = distances(*primary_features, cli.rerank)  # pictures need every row
        queries = pick_queries(primary_distmat, query, gallery, cli.queries, cli.pick, cli.seed)
        ranked = folder / f"ranked_{primary}.png"
        save_png(ranked, ranked_list_picture(primary_distmat, query, gallery, queries, cli.top))
        written = [ranked, *write_label_pictures(run, data, indices, folder,
                                                 cli.label_examples, cli.seed)]
        print("pictures: " + ", ".join(map(str, written)))
    return payload
