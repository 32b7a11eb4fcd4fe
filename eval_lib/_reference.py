"""Pure-numpy fallback: the plain per-query ``argsort`` evaluation, written straightforwardly.

Used when the compiled extension is missing, and as the reference the benchmark times and
checks the compiled kernel against. Inputs are already validated by ``eval_lib.evaluate``.
A stable sort gives the documented tie rule: equal distances rank by lower gallery index.
"""
from __future__ import annotations

import numpy as np


def market_stats(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    g_pids: np.ndarray,
    g_cams: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: rank of the first valid match and AP (-1: no valid match, -2: NaN in row)."""
    first_rank = np.full(len(q_pids), -1, dtype=np.int64)
    ap = np.zeros(len(q_pids), dtype=np.float64)
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind="stable")
        pids, cams = g_pids[order], g_cams[order]
        valid = (pids != -1) & ~((pids == q_pids[q]) & (cams == q_cams[q]))
        hits = np.flatnonzero(pids[valid] == q_pids[q])
        if len(hits) == 0:
            continue
        if np.isnan(distmat[q]).any():
            first_rank[q] = -2
            continue
        first_rank[q] = hits[0]
        ap[q] = np.mean(np.arange(1, len(hits) + 1) / (hits + 1))
    return first_rank, ap


def cuhk03_ranks(
    distmat: np.ndarray,
    q_offset: int,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    g_pids: np.ndarray,
    g_cams: np.ndarray,
    group_order: np.ndarray,
    group_start: np.ndarray,
    q_group: np.ndarray,
    draws: np.ndarray,
) -> np.ndarray:
    """Rank of the sampled match in each sampled single-shot gallery (-1: no valid match).

    For query ``q_offset + b`` and repeat ``r``, identity group ``u`` contributes its valid
    member ``floor(draws[b, r, u] * n_valid)`` (members in ascending gallery index).
    """
    nb, nr, _ = draws.shape
    sizes = np.diff(group_start)
    ranks = np.full((nb, nr), -1, dtype=np.int64)
    for b in range(nb):
        q, g = q_offset + b, q_group[q_offset + b]
        if g < 0:
            continue
        own = group_order[group_start[g] : group_start[g + 1]]
        own = own[g_cams[own] != q_cams[q]]
        if len(own) == 0:
            continue
        n_valid = sizes.copy()
        n_valid[g] = len(own)
        choice = np.minimum((draws[b] * n_valid).astype(np.int64), n_valid - 1)
        picks = group_order[group_start[:-1] + choice]
        picks[:, g] = own[choice[:, g]]
        for r in range(nr):
            sampled = np.sort(picks[r])
            order = sampled[np.argsort(distmat[q, sampled], kind="stable")]
            ranks[b, r] = np.flatnonzero(g_pids[order] == q_pids[q])[0]
    return ranks
