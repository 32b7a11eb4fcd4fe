"""Time eval_lib.evaluate against the plain numpy per-query argsort reference.

``--size market`` (the default) is Market-1501 sized (3,368 queries x 15,913 gallery, 750
identities, 6 cameras, distractors and junk in the gallery) with synthetic features tuned so
scores look like a trained model's, because the compiled kernel's cost depends on how far the
matches sit down each ranking. ``--size msmt17`` is MSMT17 sized (11,659 queries x 82,161
gallery, 3,060 identities, 15 cameras, 2048-d features like the test descriptor): features to
scores three ways, each in a process of its own so that its peak host memory is its own — in
query blocks (what ``eval_utils.score`` does), with the whole distance matrix (the unchunked
path, scoring before blocks), and the whole matrix through the numpy argsort reference.
``--rerank`` times k-reciprocal re-ranking beside the plain distances at Market size. Run
from the repo root: ``python benchmarks/bench_eval.py [--size msmt17 | --rerank --dim 2048]``.
"""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eval_lib  # noqa: E402
from core_reid.utils import ArgumentParser, run_cli  # noqa: E402

# Each size: problem shape, feature dimension, feature noise (larger = weaker model, matches
# ranked lower), gallery shares of distractors (pid 0) and junk (pid -1).
SIZES = {
    # Market: 2,793 distractors of 15,913 non-junk gallery images; noise 1.25 gives about
    # rank-1 0.9 / mAP 0.7, like a trained ResNet-50 on Market.
    "market": dict(queries=3368, gallery=15913, ids=750, cams=6, dim=128, noise=1.25,
                   distractors=0.15, junk=0.10),
    # MSMT17 has neither; noise 3.3 gives about mAP 0.45, near a trained ResNet-50's 0.5.
    "msmt17": dict(queries=11659, gallery=82161, ids=3060, cams=15, dim=2048, noise=3.3,
                   distractors=0.0, junk=0.0),
}
PATHS = ("blocks", "whole", "reference")


def make_features(
    n_query: int, n_gallery: int, n_ids: int, n_cams: int, dim: int, noise: float, seed: int,
    distractors: float = 0.15, junk: float = 0.10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic L2-normalised float32 (qf, gf, q_pids, g_pids, q_camids, g_camids).

    Each image is its identity's centre plus a per-camera shift plus noise; distractors (pid 0)
    are unrelated people, junk (pid -1) are heavily corrupted views of real identities.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids + 1, dim))
    cam_shift = rng.normal(scale=0.5, size=(n_cams, dim))

    q_pids = rng.integers(1, n_ids + 1, n_query)
    n_junk = int(n_gallery * junk)
    n_distractor = int(n_gallery * distractors)
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


def make_problem(
    n_query: int, n_gallery: int, n_ids: int, n_cams: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic (distmat, q_pids, g_pids, q_camids, g_camids) of Market's make-up; distance =
    1 - cosine."""
    qf, gf, q_pids, g_pids, q_cams, g_cams = make_features(
        n_query, n_gallery, n_ids, n_cams, dim, noise, seed)
    return 1.0 - qf @ gf.T, q_pids, g_pids, q_cams, g_cams


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time over ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_rerank(args) -> None:
    """Print the time of scoring the plain distances and of re-ranking them first."""
    import torch

    from eval_lib.rerank import k_reciprocal_distances

    qf, gf, *ids = make_features(args.queries, args.gallery, args.ids, args.cams, args.dim,
                                 args.noise, args.seed)
    qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    for name, distances in [("plain distances (-cosine) + scoring",
                             lambda: (-(qf @ gf.T)).numpy()),
                            ("k-reciprocal re-ranking + scoring",
                             lambda: k_reciprocal_distances(qf, gf))]:
        seconds, (cmc, mAP) = best_time(lambda: eval_lib.evaluate(distances(), *ids),
                                        args.repeats)
        print(f"{name}: {seconds:.2f} s (rank-1 {cmc[0]:.4f}, mAP {mAP:.4f})")


def compare_with_reference(args) -> None:
    """The Market-sized comparison: one distance matrix, the compiled kernel against the numpy
    reference and a bare per-row argsort."""
    problem = make_problem(
        args.queries, args.gallery, args.ids, args.cams, args.dim, args.noise, args.seed
    )
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
    if diff > 1e-6:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# MSMT17 size: features -> scores, one path per process.

def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def run_path(args) -> dict:
    """Features -> rank-1/5/10 and mAP one way (``args.path``), timed, with the peak host
    memory while doing it: the process's (features and torch's mapped library files included)
    and the scoring's own (the peak above what was resident when scoring began)."""
    import torch

    from eval_utils import query_blocks

    qf, gf, q_pids, g_pids, q_cams, g_cams = make_features(
        args.queries, args.gallery, args.ids, args.cams, args.dim, args.noise, args.seed,
        args.distractors, args.junk)
    qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    ids = (q_pids, g_pids, q_cams, g_cams)
    distances = 0.0

    def timed(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The blocks, adding the time spent making each to ``distances``."""
        nonlocal distances
        while True:
            start = time.perf_counter()
            block = next(blocks, None)
            distances += time.perf_counter() - start
            if block is None:
                return
            yield block
            del block

    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # restart the peak (VmHWM) here: generating the features is not scored
    resident = _memory_kb("VmRSS")
    start = time.perf_counter()
    if args.path == "blocks":  # what eval_utils.score does
        cmc, mean_ap = eval_lib.evaluate_blocks(timed(query_blocks(qf, gf)), *ids, max_rank=10)
    else:  # the whole matrix at once, as scoring did before blocks
        distmat = (-(qf @ gf.T)).float().cpu().numpy()
        distances = time.perf_counter() - start
        backend = "compiled" if args.path == "whole" else "numpy"
        cmc, mean_ap = eval_lib.evaluate(distmat, *ids, max_rank=10, backend=backend)
    seconds = time.perf_counter() - start
    peak, files = _memory_kb("VmHWM"), _memory_kb("RssFile")
    scores = {"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "mAP": mean_ap}
    return {"path": args.path, "seconds": seconds, "distances_s": distances,
            "peak_gb": peak / 2**20, "own_gb": (peak - resident) / 2**20,
            "features_gb": (qf.nbytes + gf.nbytes) / 2**30, "libraries_gb": files / 2**20,
            "scores": {k: float(v) for k, v in scores.items()}}


def compare_paths(args, argv: list[str]) -> None:
    """Run each path in a fresh process and print them side by side."""
    print(f"problem: {args.queries} queries x {args.gallery} gallery, {args.ids} ids, "
          f"{args.cams} cams, {args.dim}-d float32 features; compiled={eval_lib.CYTHON_AVAILABLE}"
          f", {os.cpu_count()} CPUs", flush=True)
    results = {}
    for path in PATHS:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--path", path],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: the {path} path failed: {proc.stderr.strip().splitlines()[-1:]}")
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[path]
        print(f"{path:9s}  scoring's own peak host memory {r['own_gb']:5.2f} GB (process "
              f"{r['peak_gb']:.2f} GB: features {r['features_gb']:.2f} GB, library files "
              f"{r['libraries_gb']:.2f} GB)  {r['seconds']:7.2f} s = distances "
              f"{r['distances_s']:6.2f} s + ranking {r['seconds'] - r['distances_s']:6.2f} s",
              flush=True)
    scores = {path: r["scores"] for path, r in results.items()}
    print("scores: " + "  ".join(f"{k} {v:.4f}" for k, v in scores["blocks"].items()))
    blocks, reference = results["blocks"], results["reference"]
    ranking = {path: r["seconds"] - r["distances_s"] for path, r in results.items()}
    print(f"speed-up of blocks over the reference: {reference['seconds'] / blocks['seconds']:.1f}x"
          f" features to scores, {ranking['reference'] / ranking['blocks']:.1f}x ranking")

    def difference(path: str) -> float:
        return max(abs(scores[path][k] - scores["blocks"][k]) for k in scores["blocks"])

    # The same kernel must agree to the bit; the reference sums each AP in another order.
    exact, close = difference("whole") == 0, difference("reference") <= 1e-9
    print(f"max abs difference of rank-1/5/10 and mAP from blocks: whole {difference('whole'):.2e}"
          f" -> {'EXACT' if exact else 'MISMATCH'}; reference {difference('reference'):.2e} -> "
          f"{'OK (float rounding of the AP sums)' if close else 'MISMATCH'}")
    if not (exact and close):
        sys.exit(1)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--size", choices=list(SIZES), default="market",
        help="market: the compiled kernel against the reference on one matrix (default); "
        "msmt17: features to scores in query blocks, whole, and through the reference, with "
        "peak host memory")
    add("--queries", type=int, help="number of queries (default: the size's, Market's 3368)")
    add("--gallery", type=int, help="gallery items, incl. junk (default: the size's)")
    add("--ids", type=int, help="identities in query and gallery (default: the size's)")
    add("--cams", type=int, help="number of cameras (default: the size's)")
    add("--dim", type=int, help="synthetic feature dimension (default: 128; msmt17: 2048)")
    add("--noise", type=float, help="feature noise: larger = weaker model, matches ranked lower "
        "(default: the size's, tuned to a trained ResNet-50's scores)")
    add("--repeats", type=int, default=3, help="timed runs of each; the best counts (default: 3; "
        "market size only)")
    add("--seed", type=int, default=0, help="seed of the synthetic problem (default: 0)")
    add("--rerank", action="store_true", help="market size: time k-reciprocal re-ranking "
        "(k1=20, k2=6, lambda=0.3) against the plain distances; use --dim 2048, ResNet-50's "
        "descriptor")
    add("--path", choices=PATHS, help="run one path of --size msmt17 and print its record "
        "(what --size msmt17 runs in each child process)")
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    for name, value in SIZES[args.size].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if min(args.queries, args.gallery, args.ids, args.cams, args.dim, args.repeats) < 1:
        parser.error("--queries, --gallery, --ids, --cams, --dim and --repeats must be >= 1")
    if args.path is not None:
        print(json.dumps(run_path(args)))
    elif args.size == "msmt17":
        compare_paths(args, argv)
    elif args.rerank:
        time_rerank(args)
    else:
        compare_with_reference(args)


if __name__ == "__main__":
    run_cli(main)
