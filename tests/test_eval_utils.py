"""Feature extraction and scoring end to end: a tiny real model on real image files."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval_lib
from datasets import load_split
from datasets.market1501 import released_code_camid
from datasets.pipeline import LoaderBatches, eval_transform
from eval_utils import EvalSet, extract_features, get_test_acc, query_blocks, scoring_identities
from model import build_model

CROP = (32, 16)
CPU = torch.device("cpu")


def make_eval_set(prepared_market, split, protocol="standard"):
    data = load_split(prepared_market.parent, "market", split)
    if split == "gallery" and protocol == "standard":
        data = data.subset(np.flatnonzero(data.pids != -1))
    pids, camids = scoring_identities(data.pids, data.camids, data.classes, data.targets,
                                   [p.name for p in data.paths], protocol)
    return EvalSet(LoaderBatches(data, eval_transform(CROP), 5, False, 0, CPU), pids, camids,
                   list(data.paths))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 4, "none").eval()


def released_descriptor(model, images):
    """A literal restatement of the released extraction: per batch, for the image and then its
    mirror (index_select over the width), add the L2-normalised pool5 feature the released model
    returns in eval mode; L2-normalise the sum."""
    features = []
    for img in images.split(4):
        ff = torch.zeros(len(img), model.feat_dim)
        for i in range(2):
            if i == 1:
                img = img.index_select(3, torch.arange(img.size(3) - 1, -1, -1))
            f = model.pool5(img)
            ff = ff + f / torch.norm(f, p=2, dim=1, keepdim=True)
        features.append(ff / torch.norm(ff, p=2, dim=1, keepdim=True))
    return torch.cat(features)


def test_features_are_the_released_descriptor(prepared_market, model):
    query = make_eval_set(prepared_market, "query")
    feats = extract_features(model, query, CPU)
    assert feats.shape == (len(query), 512)
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(query)), atol=1e-5)
    x = torch.cat([x for x, _ in query.batches.batches()])
    with torch.no_grad():
        expected = released_descriptor(model, x)
        raw_sum = F.normalize(model.pool5(x) + model.pool5(x.flip(3)), dim=1)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert not torch.allclose(feats, raw_sum, atol=1e-5)  # the normalisation order matters


def test_get_test_acc_equals_scoring_the_features_by_hand(prepared_market, model):
    query = make_eval_set(prepared_market, "query")
    gallery = make_eval_set(prepared_market, "gallery")
    assert -1 not in gallery.pids  # junk was dropped before scoring
    scores = get_test_acc(model, query, gallery, CPU)
    qf, gf = extract_features(model, query, CPU), extract_features(model, gallery, CPU)
    cmc, mean_ap = eval_lib.evaluate((-(qf @ gf.T)).numpy(), query.pids, gallery.pids,
                                     query.camids, gallery.camids)
    assert scores == pytest.approx({"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9],
                                    "mAP": mean_ap})
    assert model.training is False


def test_released_protocol_reads_cameras_from_frames_and_keeps_junk(prepared_market):
    gallery = make_eval_set(prepared_market, "gallery", "released")
    data = load_split(prepared_market.parent, "market", "gallery")
    assert len(gallery) == len(data)  # junk kept ...
    assert -1 not in gallery.pids and (gallery.pids == -2).sum() == (data.pids == -1).sum()
    expected = [released_code_camid(p.name) for p in data.paths]  # ... cameras mis-read
    assert gallery.camids.tolist() == expected
    assert not np.array_equal(gallery.camids, data.camids)


def test_scoring_in_query_blocks_is_exact_and_bounded(prepared_market, model):
    query = make_eval_set(prepared_market, "query")
    gallery = make_eval_set(prepared_market, "gallery")
    qf, gf = extract_features(model, query, CPU), extract_features(model, gallery, CPU)
    block_bytes = 3 * 4 * len(gallery)  # three queries' float32 distances per block
    blocks = list(query_blocks(qf, gf, block_bytes))
    assert len(blocks) == -(-len(query) // 3)
    assert all(b.dtype == np.float32 and b.nbytes <= block_bytes for b in blocks)
    stacked = np.concatenate(blocks)
    np.testing.assert_allclose(stacked, (-(qf @ gf.T)).numpy(), rtol=0, atol=1e-6)
    tail = len(query) % 3 or 3  # the last block's rows come from a product as tall as the rest
    assert np.array_equal(blocks[-1], (-(qf[-3:] @ gf.T)).numpy()[3 - tail:])
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    cmc, mean_ap = eval_lib.evaluate_blocks(blocks, *ids)
    whole_cmc, whole_ap = eval_lib.evaluate(stacked, *ids)
    assert np.array_equal(cmc, whole_cmc) and mean_ap == whole_ap
