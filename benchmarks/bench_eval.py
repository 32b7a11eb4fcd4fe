"""Time eval_lib.evaluate against the plain numpy per-query argsort reference, and with
``--rerank`` k-reciprocal re-ranking against the plain distances.

The default problem is Market-1501 sized (3,368 queries x 15,913 gallery, 750 identities,
6 cameras, distractors and junk in the gallery) with synthetic features tuned so scores look
like a trained model's, because the compiled kernel's cost depends on how far the matches sit
down each ranking. Run from the repo root: ``python benchmarks/bench_eval.py``, and
``python benchmarks/bench_eval.py --rerank --dim 2048`` (ResNet-50's descriptor size).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eval_lib  # noqa: E402
from eval_lib.rerank import k_reciprocal_distances  # noqa: E402
from utils import ArgumentParser, run_cli  # noqa: E402

DISTRACTOR_FRACTION = 0.15  # Market: 2,793 of 15,913 non-junk gallery images
JUNK_FRACTION = 0.10


def make_features(
    n_query: int, n_gallery: int, n_ids: int, n_cams: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Synthetic (qf, gf, q_pids, g_pids, q_camids, g_camids), unit-length float32 features.

    Each image is its identity's centre plus a per-camera shift plus noise; distractors (pid 0)
    are unrelated people, junk (pid -1) are heavily corrupted views of real identities.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids + 1, dim))
    cam_shift = rng.normal(scale=0.5, size=(n_cams, dim))

    q_pids = rng.integers(1, n_ids + 1, n_query)
    n_junk = int(n_gallery * JUNK_FRACTION)
    n_distractor = int(n_gallery * DISTRACTOR_FRACTION)
    n_real = n_gallery - n_junk - n_distractor
    g_pids = np.concatenate(
        [rng.integers(1, n_ids + 1, n_real), np.zeros(n_distractor, int), np.full(n_junk, -1)]
    )
    q_cams = rng.integers(0, n_cams, n_query)
    g_cams = rng.integers(0, n_cams, n_gallery)

    def features(pids: np.ndarray, cams: np.ndarray, scale: float) -> np.ndarray:
        base = centres[np.maximum(pids, 0)]
        base[pids == 0] = rng.normal(size=(int((pids == 0).sum()), dim))
        junk_ids = rng.integers(1, n_ids + 1, int((pids == -1).sum()))
        base[pids == -1] = centres[junk_ids]
        feats = base + cam_shift[cams] + scale * rng.normal(size=base.shape)
        feats[pids == -1] += 2 * noise * rng.normal(size=(len(junk_ids), dim))
        return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)

    qf = features(q_pids, q_cams, noise)
    gf = features(g_pids, g_cams, noise)
    order = rng.permutation(n_gallery)
    return qf, gf[order], q_pids, g_pids[order], q_cams, g_cams[order]


def make_problem(*spec: float) -> tuple[np.ndarray, ...]:
    """Synthetic (distmat, q_pids, g_pids, q_camids, g_camids) of ``make_features(*spec)``;
    distance = 1 - cosine."""
    qf, gf, q_pids, g_pids, q_cams, g_cams = make_features(*spec)
    return 1.0 - qf @ gf.T, q_pids, g_pids, q_cams, g_cams


def time_rerank(features: tuple[np.ndarray, ...], repeats: int) -> None:
    """Print the time of scoring the plain distances and of re-ranking them first."""
    qf, gf, *ids = features
    qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    for name, distances in [("plain distances (-cosine) + scoring",
                             lambda: (-(qf @ gf.T)).numpy()),
                            ("k-reciprocal re-ranking + scoring",
                             lambda: k_reciprocal_distances(qf, gf))]:
        seconds, (cmc, mAP) = best_time(lambda: eval_lib.evaluate(distances(), *ids), repeats)
        print(f"{name}: {seconds:.2f} s (rank-1 {cmc[0]:.4f}, mAP {mAP:.4f})")


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time over ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--queries", type=int, default=3368, help="number of queries (default: Market's 3368)")
    add("--gallery", type=int, default=15913, help="gallery items, incl. junk (default: 15913)")
    add("--ids", type=int, default=750, help="identities in query and gallery (default: 750)")
    add("--cams", type=int, default=6, help="number of cameras (default: 6)")
    add("--dim", type=int, default=128, help="synthetic feature dimension (default: 128)")
    add(
        "--noise", type=float, default=1.25,
        help="feature noise: larger = weaker model, matches ranked lower; the default 1.25 "
        "gives about rank-1 0.9 / mAP 0.7, like a trained ResNet-50 on Market",
    )
    add("--repeats", type=int, default=3, help="timed runs of each; the best counts (default: 3)")
    add("--seed", type=int, default=0, help="seed of the synthetic problem (default: 0)")
    add("--rerank", action="store_true", help="also time k-reciprocal re-ranking (k1=20, k2=6, "
        "lambda=0.3) against the plain distances; use --dim 2048, ResNet-50's descriptor")
    args = parser.parse_args()
    if min(args.queries, args.gallery, args.ids, args.cams, args.dim, args.repeats) < 1:
        parser.error("--queries, --gallery, --ids, --cams, --dim and --repeats must be >= 1")

    spec = (args.queries, args.gallery, args.ids, args.cams, args.dim, args.noise, args.seed)
    problem = make_problem(*spec)
    print(
        f"problem: {args.queries} queries x {args.gallery} gallery, {args.ids} ids, "
        f"{args.cams} cams, float32; compiled={eval_lib.CYTHON_AVAILABLE}"
        + (f", openmp={eval_lib._eval_cy.OPENMP}" if eval_lib.CYTHON_AVAILABLE else "")
        + f", OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )

    def reference() -> tuple[np.ndarray, float]:
        return eval_lib.evaluate(*problem, backend="numpy")

    def bare_argsort() -> list[np.ndarray]:
        return [np.argsort(row) for row in problem[0]]

    t_ref, (cmc_ref, map_ref) = best_time(reference, args.repeats)
    t_ours, (cmc, mAP) = best_time(lambda: eval_lib.evaluate(*problem), args.repeats)
    t_sort, _ = best_time(bare_argsort, args.repeats)

    diff = max(float(np.abs(cmc - cmc_ref).max()), abs(mAP - map_ref))
    verdict = "OK" if diff <= 1e-6 else "MISMATCH"
    print(f"scores: rank-1 {cmc[0]:.4f}  rank-5 {cmc[min(4, len(cmc) - 1)]:.4f}  mAP {mAP:.4f}")
    print(f"numpy reference (stable argsort per query): {t_ref:.3f} s")
    print(f"argsort alone (default quicksort per row, no scoring): {t_sort:.3f} s")
    print(f"eval_lib.evaluate: {t_ours:.4f} s")
    print(f"speed-up: {t_ref / t_ours:.1f}x vs reference, {t_sort / t_ours:.1f}x vs bare argsort")
    print(f"max abs difference (CMC entries and mAP): {diff:.2e} -> {verdict}")
    if args.rerank:
        time_rerank(make_features(*spec), args.repeats)
    if diff > 1e-6:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
