"""Re-ID evaluation (CMC and mAP) with a compiled kernel and a pure-numpy fallback.

``evaluate`` implements the standard Market-1501 protocol (and single-shot CUHK03);
``evaluate_blocks`` gives ``evaluate``'s Market-1501 result for a distance matrix handed over in
blocks of query rows, so that no more than one block need exist at once. The compiled
extension ``eval_lib._eval_cy`` is built by ``pip install -e .`` from the repo root; without it
the slow numpy reference in ``eval_lib._reference`` is used and one warning says so.
``CYTHON_AVAILABLE`` tells which is in use. Threads of the compiled kernel: ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

import operator
import warnings
from typing import Any, Iterable

import numpy as np

from . import _reference

try:
    from . import _eval_cy
except ImportError:
    _eval_cy = None
    warnings.warn(
        "eval_lib: compiled extension eval_lib._eval_cy is missing, using the slow numpy "
        "fallback; build it with `pip install -e .` in the repo root",
        RuntimeWarning,
        stacklevel=2,
    )

CYTHON_AVAILABLE: bool = _eval_cy is not None

__all__ = ["CYTHON_AVAILABLE", "evaluate", "evaluate_blocks", "eval_market1501_wrap",
           "average_precisions", "ranked_lists"]

PROTOCOLS = ("market1501", "cuhk03")
BACKENDS = ("auto", "compiled", "numpy")
JUNK_PID = -1
# Queries per block of CUHK03 random draws: a fixed size, so every backend consumes the random
# stream identically and memory stays bounded (block x num_repeats x identities doubles).
_CUHK03_BLOCK = 256
_INT64_MAX = np.iinfo(np.int64).max


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    protocol: str = "market1501",
    num_repeats: int = 10,
    seed: int = 0,
    backend: str = "auto",
) -> tuple[np.ndarray, float]:
    """Return ``(cmc, mAP)`` for a query x gallery distance matrix (smaller = more similar).

    Per query, gallery items of the same identity seen by the same camera, and junk items
    (pid -1), are dropped: they count neither as match nor as mismatch. The rest is ranked by
    ascending distance; equal distances rank by lower gallery index (what a stable argsort
    gives), so results are fully deterministic. Queries with no remaining match are skipped;
    if no query has one, ValueError. Distractors (e.g. pid 0) are ordinary negatives.

    protocol="market1501": ``cmc[k]`` = fraction of queries with a match in the top k+1;
    AP = mean over the matches of (matches so far / position); mAP = mean AP.
    protocol="cuhk03" (single-shot): for each query and each of ``num_repeats`` repeats, every
    identity keeps one randomly chosen valid gallery image (the draws come from
    ``numpy.random.default_rng(seed)``, so a seed gives the same result every time) and the
    CMC is averaged over queries and repeats. AP is not sampled: it is computed on the full
    filtered gallery, exactly as under market1501.

    ``cmc`` is a float64 array of length ``max_rank``, clamped to the gallery size when the
    gallery is smaller. ``distmat`` may be any real float or integer array or nested list;
    floats wider than 64 bits are compared as float64. A NaN in the row of a query that has a
    valid match raises ValueError (rows of skipped queries are not read). pids and camera ids
    must be integers (integer-valued floats are accepted). ``backend``: "auto" (compiled if
    built), "compiled" or "numpy" (the slow reference); all give identical results.
    """
    dist, q_pids_a, g_pids_a, q_cams_a, g_cams_a = _checked(distmat, q_pids, g_pids, q_camids,
                                                            g_camids)
    ng = dist.shape[1]
    max_rank = min(_positive_int(max_rank, "max_rank"), ng)
    num_repeats = _positive_int(num_repeats, "num_repeats")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    kernel = _pick_backend(backend)

    groups = _GalleryGroups(g_pids_a, q_pids_a)
    first_rank, ap = _market_stats(kernel, dist, q_pids_a, q_cams_a, g_pids_a, g_cams_a, groups)
    valid = _answered_queries(first_rank)
    if protocol == "market1501":
        ranks = first_rank[valid]
    else:
        all_ranks = _cuhk03_ranks(
            kernel, dist, q_pids_a, q_cams_a, g_pids_a, g_cams_a, groups, num_repeats, seed
        )
        ranks = all_ranks[valid].ravel()
    return _cmc(ranks, max_rank), float(ap[valid].mean())


def evaluate_blocks(
    distance_blocks: Iterable[Any],
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    backend: str = "auto",
) -> tuple[np.ndarray, float]:
    """``evaluate(..., protocol="market1501")`` of the matrix whose consecutive row blocks
    ``distance_blocks`` yields (any number of query rows each, every gallery column).

    Each query is scored from its own row alone, so the result is exactly that of the stacked
    matrix, while memory holds one block at a time: MSMT17's 11,659 x 82,161 float32 matrix is
    3.8 GB, a block of a few hundred rows some 100 MB. Blocks may differ in dtype (any that
    ``evaluate`` takes); NaN rows, a wrong block width and a row count that does not add up to
    ``len(q_pids)`` raise ValueError.
    """
    nq, ng = np.size(q_pids), np.size(g_pids)
    q_pids_a, g_pids_a, q_cams_a, g_cams_a = _as_all_ids(q_pids, g_pids, q_camids, g_camids,
                                                         nq, ng)
    max_rank = min(_positive_int(max_rank, "max_rank"), ng)
    kernel = _pick_backend(backend)
    groups = _GalleryGroups(g_pids_a, q_pids_a)
    first_rank, ap = np.empty(nq, dtype=np.int64), np.empty(nq, dtype=np.float64)
    start = 0
    for block in distance_blocks:
        if np.ndim(block) == 2 and np.shape(block)[0] == 0:
            continue  # an empty block scores no query
        dist = _as_distmat(block)
        stop = start + dist.shape[0]
        if dist.shape[1] != ng or stop > nq:
            raise ValueError(f"distance block of shape {dist.shape} at row {start} does not fit "
                             f"a {nq} x {ng} matrix")
        rows = slice(start, stop)
        first_rank[rows], ap[rows] = _market_stats(
            kernel, dist, q_pids_a[rows], q_cams_a[rows], g_pids_a, g_cams_a, groups, rows
        )
        del block, dist  # so that the next block is not made while this one is still held
        start = stop
    if start != nq:
        raise ValueError(f"distance blocks hold {start} rows but there are {nq} queries")
    valid = _answered_queries(first_rank)
    return _cmc(first_rank[valid], max_rank), float(ap[valid].mean())


def eval_market1501_wrap(
    distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, max_rank: int = 50
) -> tuple[np.ndarray, float]:
    """Name used by the released code; ``evaluate`` with the standard Market-1501 protocol."""
    return evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, protocol="market1501")


def average_precisions(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                       backend: str = "auto") -> np.ndarray:
    """Each query's AP under the market1501 protocol (``evaluate``'s), NaN for a query without a
    valid match: which queries a model ranks worst."""
    dist, q_pids_a, g_pids_a, q_cams_a, g_cams_a = _checked(distmat, q_pids, g_pids, q_camids,
                                                            g_camids)
    groups = _GalleryGroups(g_pids_a, q_pids_a)
    first_rank, ap = _market_stats(_pick_backend(backend), dist, q_pids_a, q_cams_a, g_pids_a,
                                   g_cams_a, groups)
    return np.where(first_rank >= 0, ap, np.nan)


def ranked_lists(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                 queries: Any, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``top`` gallery items of each of the ``queries`` (row indices) as the protocol
    ranks them: junk and same-identity same-camera items left out, ties by lower index.

    Returns ``(gallery indices, is_match)``, each (len(queries), top); a gallery too small
    for ``top`` pads with index -1 (never a match).
    """
    dist, q_pids_a, g_pids_a, q_cams_a, g_cams_a = _checked(distmat, q_pids, g_pids, q_camids,
                                                            g_camids)
    queries = np.asarray(queries, dtype=np.int64)
    index = np.full((len(queries), top), -1, dtype=np.int64)
    for row, q in enumerate(queries):
        order = np.argsort(dist[q], kind="stable")
        same = g_pids_a[order] == q_pids_a[q]
        valid = (g_pids_a[order] != JUNK_PID) & ~(same & (g_cams_a[order] == q_cams_a[q]))
        kept = order[valid][:top]
        index[row, :len(kept)] = kept
    is_match = (index >= 0) & (g_pids_a[index] == q_pids_a[queries, None])
    return index, is_match


def _checked(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any,
             g_camids: Any) -> tuple[np.ndarray, ...]:
    """The inputs as the kernels take them; ValueError naming the first bad one."""
    dist = _as_distmat(distmat)
    return (dist, *_as_all_ids(q_pids, g_pids, q_camids, g_camids, *dist.shape))


def _pick_backend(backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy" or (backend == "auto" and _eval_cy is None):
        return _reference
    if _eval_cy is None:
        raise RuntimeError(
            "backend='compiled' but eval_lib._eval_cy is not built; run `pip install -e .` "
            "in the repo root"
        )
    return _eval_cy


class _GalleryGroups:
    """Non-junk gallery items grouped by identity, and each query's group (-1: none).

    Group u holds pid ``uids[u]``: gallery indices ``order[start[u]:start[u + 1]]``, ascending.
    """

    def __init__(self, g_pids: np.ndarray, q_pids: np.ndarray):
        order = np.argsort(g_pids, kind="stable")
        self.order = order[g_pids[order] != JUNK_PID].astype(np.int64)
        self.uids, starts = np.unique(g_pids[self.order], return_index=True)
        self.start = np.append(starts, len(self.order)).astype(np.int64)
        where = np.searchsorted(self.uids, q_pids)
        found = where < len(self.uids)
        found[found] = self.uids[where[found]] == q_pids[found]
        self.of_query = np.where(found, where, -1)


def _market_stats(kernel, dist, q_pids, q_cams, g_pids, g_cams, groups: _GalleryGroups,
                  rows: slice = slice(None)):
    """Per query: rank of the first valid match (-1 none, -2 NaN in row) and AP; ``dist`` holds
    the ``rows`` of the queries ``groups`` was built for."""
    if kernel is _reference:
        return _reference.market_stats(dist, q_pids, q_cams, g_pids, g_cams)
    nq = len(q_pids)
    of_query = groups.of_query[rows]
    has_group = of_query >= 0
    q_start, q_end = np.zeros(nq, dtype=np.int64), np.zeros(nq, dtype=np.int64)
    q_start[has_group] = groups.start[of_query[has_group]]
    q_end[has_group] = groups.start[of_query[has_group] + 1]
    first_rank, ap = np.empty(nq, dtype=np.int64), np.zeros(nq, dtype=np.float64)
    kernel.market_stats(
        dist, q_pids, q_cams, g_pids, g_cams, groups.order, q_start, q_end,
        int(np.diff(groups.start).max(initial=0)), first_rank, ap,
    )
    return first_rank, ap


def _answered_queries(first_rank: np.ndarray) -> np.ndarray:
    """The mask of queries with a valid match; ValueError for a NaN row or if there are none."""
    nan_rows = np.flatnonzero(first_rank == -2)
    if len(nan_rows):
        raise ValueError(f"distmat contains NaN (row {nan_rows[0]}); distances must be numbers")
    valid = first_rank >= 0
    if not valid.any():
        raise ValueError(
            "no query has a valid match in the gallery (each query's identity is absent from "
            "the gallery, junk, or only seen by the query's own camera)"
        )
    return valid


def _cmc(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """``cmc[k]`` = the fraction of ``ranks`` (0-based) below k + 1."""
    hits_at = np.bincount(np.minimum(ranks, max_rank), minlength=max_rank + 1)[:max_rank]
    return np.cumsum(hits_at) / len(ranks)


def _cuhk03_ranks(kernel, dist, q_pids, q_cams, g_pids, g_cams, groups, num_repeats, seed):
    """(queries x repeats) rank of the sampled match in each sampled gallery (-1: no match).

    Both backends get the same draws, taken block by block from one seeded generator.
    """
    rng = np.random.default_rng(seed)
    ranks = np.empty((len(q_pids), num_repeats), dtype=np.int64)
    for start in range(0, len(q_pids), _CUHK03_BLOCK):
        stop = min(start + _CUHK03_BLOCK, len(q_pids))
        draws = rng.random((stop - start, num_repeats, len(groups.uids)))
        if kernel is _reference:
            ranks[start:stop] = _reference.cuhk03_ranks(
                dist, start, q_pids, q_cams, g_pids, g_cams, groups.order, groups.start,
                groups.of_query, draws,
            )
        else:
            kernel.cuhk03_ranks(
                dist, start, q_cams, groups.of_query, g_cams, groups.order, groups.start, draws,
                ranks[start:stop],
            )
    return ranks


def _as_distmat(distmat: Any) -> np.ndarray:
    """C-contiguous float32, float64 or int64 copy-free where possible (the kernel's types)."""
    try:
        arr = np.asarray(distmat)
    except (ValueError, TypeError) as err:
        raise ValueError(f"distmat must be a 2-D array of numbers: {err}") from None
    if arr.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"distmat needs at least one query and one gallery item, got {arr.shape}")
    if arr.dtype.kind == "f":
        target = np.float32 if arr.dtype.itemsize <= 4 else np.float64
    elif arr.dtype.kind in "iub":
        if arr.dtype == np.uint64 and arr.max() > _INT64_MAX:
            raise ValueError("distmat has uint64 values too large for int64")
        target = np.int64
    else:
        raise ValueError(f"distmat must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=target)


def _as_all_ids(q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, nq: int,
                ng: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four id vectors, checked against ``nq`` queries and ``ng`` gallery items."""
    return (_as_ids(q_pids, "q_pids", nq, "rows (queries)"),
            _as_ids(g_pids, "g_pids", ng, "columns (gallery items)"),
            _as_ids(q_camids, "q_camids", nq, "rows (queries)"),
            _as_ids(g_camids, "g_camids", ng, "columns (gallery items)"))


def _as_ids(values: Any, name: str, length: int, what: str) -> np.ndarray:
    """A 1-D int64 id vector of the given length; integer-valued floats are accepted."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of integers: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) != length:
        raise ValueError(f"{name} has {len(arr)} entries but distmat has {length} {what}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and len(arr) and arr.max() > _INT64_MAX:
        raise ValueError(f"{name} has values too large for int64")
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{name} must hold integers, got non-integer values")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {number}")
    return number
