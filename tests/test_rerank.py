"""k-reciprocal re-ranking against a literal, loop-by-loop restatement of the paper's
definitions (float64, Python sets) on small random problems with identity structure."""
import numpy as np
import pytest
import torch

import eval_lib
from eval_lib.rerank import k_reciprocal_distances


def reference_rerank(qf, gf, k1, k2, lam):
    """Straightforward re-ranking: dense distances, full sorts, sets, one probe at a time."""
    feats = np.concatenate([qf, gf])
    n, nq = len(feats), len(qf)
    diff = feats[:, None, :] - feats[None, :, :]
    dist = (diff ** 2).sum(axis=2)
    dist = dist / dist.max(axis=1, keepdims=True)
    ranking = [sorted(range(n), key=lambda x: (dist[p, x], x)) for p in range(n)]

    def nearest(p, k):
        return ranking[p][:k]

    def reciprocal(p, k):
        return {x for x in nearest(p, k + 1) if p in nearest(x, k + 1)}

    stats = {"accepted": 0, "rejected": 0}
    encoding = np.zeros((n, n))
    for p in range(n):
        r = reciprocal(p, k1)
        expanded = set(r)
        for x in r:
            candidate = reciprocal(x, int(round(k1 / 2)))
            if len(candidate & r) > 2 / 3 * len(candidate):
                expanded |= candidate
                stats["accepted"] += 1
            else:
                stats["rejected"] += 1
        for x in expanded:
            encoding[p, x] = np.exp(-dist[p, x])
        encoding[p] /= encoding[p].sum()
    expanded_encoding = np.array([encoding[nearest(p, k2)].mean(axis=0) for p in range(n)])
    out = np.empty((nq, n - nq))
    for p in range(nq):
        for g in range(nq, n):
            a, b = expanded_encoding[p], expanded_encoding[g]
            jaccard = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            out[p, g - nq] = (1 - lam) * jaccard + lam * dist[p, g]
    return out, stats


def identity_problem(seed, nq=14, ng=70, ids=9, dim=12, spread=0.8):
    """Descriptors of a few identities plus noise (so neighbour sets overlap as in Re-ID)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qf = centres[q_pids] + spread * rng.normal(size=(nq, dim))
    gf = centres[g_pids] + spread * rng.normal(size=(ng, dim))
    return qf, gf, q_pids, g_pids


@pytest.mark.parametrize("seed, k1, k2, lam", [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 7, 3, 0.5),
                                               (3, 4, 1, 0.0), (4, 30, 6, 1.0),
                                               (5, 1, 2, 0.3)])
def test_rerank_equals_the_reference(seed, k1, k2, lam):
    qf, gf, _, _ = identity_problem(seed)
    expected, stats = reference_rerank(qf, gf, k1, k2, lam)
    got = k_reciprocal_distances(torch.from_numpy(qf), torch.from_numpy(gf), k1, k2, lam)
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    if k1 >= 7:  # the expansion step is exercised both ways
        assert stats["accepted"] > 0 and stats["rejected"] > 0


def test_float32_descriptors_agree_with_the_float64_reference():
    qf, gf, _, _ = identity_problem(6, nq=20, ng=90, dim=32)
    expected, _ = reference_rerank(qf, gf, 20, 6, 0.3)
    got = k_reciprocal_distances(torch.from_numpy(qf).float(), torch.from_numpy(gf).float())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_large_problem_crosses_blocks_and_distance_misses(monkeypatch):
    """More images than a block of the dense pass, and few kept neighbours per row, so that
    the block merge and the directly computed distances are both exercised."""
    import eval_lib.rerank as rerank
    qf, gf, _, _ = identity_problem(7, nq=25, ng=160, ids=12, dim=10)
    expected, _ = reference_rerank(qf, gf, 20, 6, 0.3)
    monkeypatch.setattr(rerank, "_BLOCK", 64)
    monkeypatch.setattr(rerank, "_KEPT_PER_K1", 1)
    got = k_reciprocal_distances(torch.from_numpy(qf), torch.from_numpy(gf))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_rerank_helps_on_structured_data():
    """Not a proof, a sanity check: on identity-structured data re-ranking raises mAP."""
    qf, gf, q_pids, g_pids = identity_problem(8, nq=60, ng=400, ids=30, dim=16, spread=1.2)
    q_cams, g_cams = np.zeros(len(qf), int), np.ones(len(gf), int)
    plain = ((qf[:, None] - gf[None]) ** 2).sum(axis=2)
    _, map_plain = eval_lib.evaluate(plain, q_pids, g_pids, q_cams, g_cams)
    reranked = k_reciprocal_distances(torch.from_numpy(qf), torch.from_numpy(gf))
    _, map_rerank = eval_lib.evaluate(reranked, q_pids, g_pids, q_cams, g_cams)
    assert map_rerank > map_plain


def test_bad_parameters_are_refused(monkeypatch):
    import eval_lib.rerank as rerank
    q, g = torch.zeros(2, 4), torch.zeros(3, 5)
    with pytest.raises(ValueError, match="same dim"):
        k_reciprocal_distances(q, g)
    with pytest.raises(ValueError, match="k1 >= 1"):
        k_reciprocal_distances(q, torch.zeros(3, 4), k1=0)
    monkeypatch.setattr(rerank, "_eval_cy", None)  # as when the extension could not be built
    with pytest.raises(RuntimeError, match="run `pip install -e .`"):
        k_reciprocal_distances(q, torch.zeros(3, 4))
