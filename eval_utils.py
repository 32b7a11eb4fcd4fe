"""Feature extraction and Re-ID scoring (rank-1/5/10, mAP) of a model on query and gallery.

The descriptor of an image is, as in the released code, the L2-normalised pool5 feature of the
image plus the L2-normalised pool5 feature of its horizontal flip, L2-normalised again; the
distance is the negative cosine similarity, or, when asked, the k-reciprocal re-ranked distance
(``eval_lib.rerank``). Scoring is ``eval_lib.evaluate_blocks`` (compiled), under the standard
Market-1501 protocol by default, on blocks of queries so that memory stays bounded at MSMT17's
size (re-ranking needs every pair, so it scores the whole matrix).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import eval_lib
from datasets.market1501 import JUNK_PID, released_code_camid
from datasets.pipeline import CachedBatches, LoaderBatches
from eval_lib.rerank import k_reciprocal_distances

EVAL_PROTOCOLS = ("standard", "released")
# In the "released" comparison protocol junk must count as a negative, so it gets a pid that
# eval_lib does not drop and no query has.
_JUNK_AS_NEGATIVE = -2
# Host memory for one block of query-to-gallery distances: Market-1501's, DukeMTMC-reID's and
# CUHK03-NP's whole matrices fit in one (Market's is 214 MB), MSMT17's 3.8 GB takes 15 blocks of
# 816 queries x 82,161 gallery images.
SCORE_BLOCK_BYTES = 256 << 20


@dataclass
class EvalSet:
    """One test split ready for extraction: its batches, each image's identity and camera (as
    the protocol scores them) and its file (for pictures)."""
    batches: Union[CachedBatches, LoaderBatches]
    pids: np.ndarray
    camids: np.ndarray
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.pids)


def scoring_identities(pids: np.ndarray, camids: np.ndarray, class_names: list[str],
                       targets: np.ndarray, file_names: list[str],
                       protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """The (pids, camids) a protocol scores with.

    ``standard``: parsed from the file names (Market-1501 convention). ``released``: what the
    released CORE evaluation ends up using on the common layout — the identity from the folder
    name, a "camera" made from the file name's first and third fields (so same-camera matches
    are not removed) and junk counted as a negative. Offered only to explain its optimistic
    numbers; see docs/evaluation.md.
    """
    if protocol == "standard":
        return pids, camids
    folder_pids = np.array([int(class_names[t]) for t in targets], dtype=np.int64)
    folder_pids[folder_pids == JUNK_PID] = _JUNK_AS_NEGATIVE
    cams = np.array([released_code_camid(name) for name in file_names], dtype=np.int64)
    return folder_pids, cams


@torch.inference_mode()
def eval_outputs(model: torch.nn.Module, batches: Union[CachedBatches, LoaderBatches],
                 forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                 device: torch.device, amp: bool = False, channels_last: bool = False,
                 desc: Optional[str] = None) -> torch.Tensor:
    """``forward(model, images)`` of every batch in order, in eval mode, concatenated (float32,
    on the device); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    outputs = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for x, _ in tqdm(batches.batches(), total=len(batches), desc=desc, leave=False,
                         disable=None if desc else True):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outputs.append(forward(model, x).float())
    model.train(was_training)
    return torch.cat(outputs)


def pool5_descriptor(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The released test descriptor: L2-normalised pool5 of the image and of its mirror, added,
    and the sum L2-normalised again."""
    f = F.normalize(model.pool5(torch.cat([x, x.flip(3)])).float(), dim=1)
    return F.normalize(f[:len(x)] + f[len(x):], dim=1)


def extract_features(model: torch.nn.Module, test_set: EvalSet, device: torch.device,
                     amp: bool = False, channels_last: bool = False,
                     desc: str = "features") -> torch.Tensor:
    """The descriptor (``pool5_descriptor``) of every image, in order (on the device)."""
    return eval_outputs(model, test_set.batches, pool5_descriptor, device, amp, channels_last,
                        desc)


def query_blocks(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                 block_bytes: int = SCORE_BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Distances (negative cosine similarity, float32) of consecutive blocks of queries to the
    whole gallery, each computed where the features are (the device) and then copied to host
    memory, at most ``block_bytes`` of it at a time.

    Every product has the same number of query rows (the last one overlaps the one before and
    only its new rows are yielded): matrix-product libraries may round a short product
    differently, and the distances would then depend on where a query falls."""
    rows = max(1, block_bytes // (4 * max(1, len(gallery_feats))))
    for start in range(0, len(query_feats), rows):
        first = max(0, min(start, len(query_feats) - rows))
        block = torch.mm(query_feats[first:start + rows], gallery_feats.T).neg_()
        yield block[start - first:].float().cpu().numpy()
        del block  # before the next one is made: never two blocks at once


def distances(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
              rerank: bool = False) -> np.ndarray:
    """The whole query x gallery distance matrix (for pictures and re-ranking): negative
    cosine similarity of the descriptors, or with ``rerank`` the k-reciprocal re-ranked
    distances (k1=20, k2=6, lambda=0.3)."""
    if rerank:
        return k_reciprocal_distances(query_feats, gallery_feats)
    return (-(query_feats @ gallery_feats.T)).float().cpu().numpy()


def score_distances(distmat: np.ndarray, query: EvalSet, gallery: EvalSet) -> dict[str, float]:
    """rank-1/5/10 and mAP (fractions in [0, 1]) of a whole query x gallery distance matrix."""
    return _scores(*eval_lib.evaluate(distmat, query.pids, gallery.pids, query.camids,
                                      gallery.camids, max_rank=10))


def score(query_feats: torch.Tensor, gallery_feats: torch.Tensor, query: EvalSet,
          gallery: EvalSet, rerank: bool = False) -> dict[str, float]:
    """rank-1/5/10 and mAP (fractions in [0, 1]) of the descriptors: negative cosine distances
    scored block by block of queries (the whole matrix is never in memory at once), or the
    re-ranked distances (``rerank``), which need the whole matrix."""
    if rerank:
        return score_distances(distances(query_feats, gallery_feats, rerank=True), query,
                               gallery)
    return _scores(*eval_lib.evaluate_blocks(query_blocks(query_feats, gallery_feats),
                                             query.pids, gallery.pids, query.camids,
                                             gallery.camids, max_rank=10))


def _scores(cmc: np.ndarray, mean_ap: float) -> dict[str, float]:
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
            "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(mean_ap)}


def test_features(model: torch.nn.Module, query: EvalSet, gallery: EvalSet,
                  device: torch.device, amp: bool = False,
                  channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The descriptors of every query and gallery image (on the device)."""
    return (extract_features(model, query, device, amp, channels_last, desc="query features"),
            extract_features(model, gallery, device, amp, channels_last,
                             desc="gallery features"))


def get_test_acc(model: torch.nn.Module, query: EvalSet, gallery: EvalSet,
                 device: torch.device, amp: bool = False, channels_last: bool = False,
                 rerank: bool = False) -> dict[str, float]:
    """Extract query and gallery features with ``model`` and score them (the released entry
    point's name)."""
    return score(*test_features(model, query, gallery, device, amp, channels_last), query,
                 gallery, rerank)
