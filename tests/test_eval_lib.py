"""Tests of eval_lib.evaluate against a deliberately naive, independent re-statement."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eval_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def naive_market(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The protocol in plain Python loops; None when no query has a valid match."""
    distmat = np.asarray(distmat).tolist()
    q_pids, g_pids = [int(p) for p in q_pids], [int(p) for p in g_pids]
    q_cams, g_cams = [int(c) for c in q_cams], [int(c) for c in g_cams]
    max_rank = min(max_rank, len(g_pids))
    cmc_counts = [0] * max_rank
    aps = []
    for q in range(len(q_pids)):
        ranked = []
        for g in range(len(g_pids)):
            if g_pids[g] == -1 or (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q]):
                continue
            ranked.append((distmat[q][g], g))
        ranked.sort()  # ties: lower gallery index first
        hits = [g_pids[g] == q_pids[q] for _, g in ranked]
        if not any(hits):
            continue
        for k in range(hits.index(True), max_rank):
            cmc_counts[k] += 1
        found, precision_sum = 0, 0.0
        for position, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precision_sum += found / position
        aps.append(precision_sum / found)
    if not aps:
        return None
    return [c / len(aps) for c in cmc_counts], sum(aps) / len(aps)


def random_problem(rng, n_query, n_gallery, n_ids, n_cams, dist_kind="float32"):
    """Ids 1..n_ids, some distractors (0) and junk (-1) in the gallery, some unmatched queries."""
    g_pids = rng.integers(1, n_ids + 1, n_gallery)
    g_pids[rng.random(n_gallery) < 0.1] = 0
    g_pids[rng.random(n_gallery) < 0.1] = -1
    q_pids = rng.integers(1, n_ids + 1, n_query)
    q_pids[rng.random(n_query) < 0.1] = n_ids + 5  # identity absent from the gallery
    q_cams = rng.integers(0, n_cams, n_query)
    g_cams = rng.integers(0, n_cams, n_gallery)
    if dist_kind == "int":
        distmat = rng.integers(0, 4, (n_query, n_gallery))
    else:
        distmat = rng.normal(size=(n_query, n_gallery)).astype(dist_kind)
        same = q_pids[:, None] == g_pids[None, :]
        distmat[same] -= 1.0  # matches tend to be closer, as with a trained model
    return distmat, q_pids, g_pids, q_cams, g_cams


def assert_same(result, expected):
    cmc, mAP = result
    exp_cmc, exp_map = expected
    assert isinstance(cmc, np.ndarray) and cmc.dtype == np.float64
    assert isinstance(mAP, float)
    np.testing.assert_allclose(cmc, exp_cmc, rtol=0, atol=1e-6)
    assert abs(mAP - exp_map) <= 1e-6


def check_against_naive(problem, max_rank, **kwargs):
    expected = naive_market(*problem, max_rank)
    if expected is None:
        with pytest.raises(ValueError, match="no query has a valid match"):
            eval_lib.evaluate(*problem, max_rank=max_rank, **kwargs)
    else:
        assert_same(eval_lib.evaluate(*problem, max_rank=max_rank, **kwargs), expected)


def test_compiled_extension_is_used():
    assert eval_lib.CYTHON_AVAILABLE is True


@pytest.mark.parametrize("dist_kind", ["float32", "float64", "int"])
def test_matches_naive_on_random_problems(dist_kind):
    rng = np.random.default_rng({"float32": 1, "float64": 2, "int": 3}[dist_kind])
    for _ in range(60):
        n_query, n_gallery = int(rng.integers(1, 25)), int(rng.integers(1, 150))
        n_ids, n_cams = int(rng.integers(1, 12)), int(rng.integers(1, 5))
        problem = random_problem(rng, n_query, n_gallery, n_ids, n_cams, dist_kind)
        for backend in ("compiled", "numpy"):
            check_against_naive(problem, int(rng.integers(1, 60)), backend=backend)


def test_large_identities_match_naive():
    """Identities with far more images than the counting-pass limit take the search path."""
    rng = np.random.default_rng(4)
    for dist_kind in ("float32", "int"):
        problem = random_problem(rng, 12, 1500, 2, 3, dist_kind)
        check_against_naive(problem, 100)


def test_market_sized_agreement_with_numpy_fallback():
    rng = np.random.default_rng(5)
    problem = random_problem(rng, 300, 3000, 150, 6)
    compiled = eval_lib.evaluate(*problem, backend="compiled")
    assert_same(eval_lib.evaluate(*problem, backend="numpy"), compiled)
    assert_same(eval_lib.eval_market1501_wrap(*problem), compiled)


@st.composite
def small_problems(draw):
    n_query = draw(st.integers(1, 5))
    n_gallery = draw(st.integers(1, 10))
    values = st.integers(0, 3) if draw(st.booleans()) else st.floats(-2, 2, width=32)
    distmat = [[draw(values) for _ in range(n_gallery)] for _ in range(n_query)]
    q_pids = draw(st.lists(st.integers(-1, 3), min_size=n_query, max_size=n_query))
    g_pids = draw(st.lists(st.integers(-1, 3), min_size=n_gallery, max_size=n_gallery))
    q_cams = draw(st.lists(st.integers(0, 2), min_size=n_query, max_size=n_query))
    g_cams = draw(st.lists(st.integers(0, 2), min_size=n_gallery, max_size=n_gallery))
    return distmat, q_pids, g_pids, q_cams, g_cams


@settings(max_examples=300, deadline=None)
@given(
    problem=small_problems(),
    max_rank=st.integers(1, 15),
    as_arrays=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.int16]),
)
def test_small_problems_match_naive(problem, max_rank, as_arrays, dtype):
    if as_arrays:
        distmat = np.asarray(problem[0])
        if np.issubdtype(dtype, np.integer):
            distmat = np.round(distmat)
        problem = (distmat.astype(dtype), *map(np.asarray, problem[1:]))
    expected = naive_market(*problem, max_rank)
    if expected is not None:
        assert len(expected[0]) == min(max_rank, len(problem[2]))
    for backend in ("compiled", "numpy"):
        check_against_naive(problem, max_rank, backend=backend)


@settings(max_examples=50, deadline=None)
@given(n_query=st.integers(1, 4), n_gallery=st.integers(1, 12), value=st.integers(-3, 3))
def test_all_ties_rank_by_gallery_index(n_query, n_gallery, value):
    rng = np.random.default_rng(n_query * 100 + n_gallery)
    problem = random_problem(rng, n_query, n_gallery, 2, 2)
    problem = (np.full((n_query, n_gallery), value), *problem[1:])
    check_against_naive(problem, 20)


DIST_DTYPES = [np.float16, np.float32, np.float64, np.longdouble, np.int8, np.int32, np.uint16]


@pytest.mark.parametrize("dtype", DIST_DTYPES + [np.uint64, bool])
def test_distance_dtypes(dtype):
    rng = np.random.default_rng(6)
    problem = random_problem(rng, 15, 60, 5, 3, "int")
    distmat = problem[0] % 2 if dtype is bool else problem[0]
    problem = (distmat.astype(dtype), *problem[1:])
    check_against_naive(problem, 30)


def test_infinite_distances_match_naive():
    rng = np.random.default_rng(11)
    for _ in range(10):
        distmat, *ids = random_problem(rng, 10, 50, 4, 3, "float64")
        distmat[rng.random(distmat.shape) < 0.2] = np.inf
        distmat[rng.random(distmat.shape) < 0.1] = -np.inf
        for backend in ("compiled", "numpy"):
            check_against_naive((distmat, *ids), 20, backend=backend)


def test_id_vectors_accept_integer_valued_floats_and_lists():
    rng = np.random.default_rng(7)
    distmat, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 10, 40, 4, 3)
    expected = eval_lib.evaluate(distmat, q_pids, g_pids, q_cams, g_cams)
    mixed = (q_pids.astype(float), g_pids.tolist(), q_cams.astype(np.int8), g_cams)
    assert_same(eval_lib.evaluate(distmat, *mixed), expected)


def test_max_rank_is_clamped_to_gallery_size():
    distmat = [[0.1, 0.5, 0.3]]
    cmc, mAP = eval_lib.evaluate(distmat, [1], [2, 1, 1], [0], [1, 1, 1], max_rank=50)
    np.testing.assert_array_equal(cmc, [0.0, 1.0, 1.0])  # ranking: 0 (pid 2), 2, 1
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_junk_and_same_camera_matches_do_not_count():
    # gallery: junk closest, then the same-camera match, then a true match, then a distractor
    distmat = [[0.0, 0.1, 0.2, 0.3]]
    cmc, mAP = eval_lib.evaluate(distmat, [7], [-1, 7, 7, 0], [1], [2, 1, 2, 3], max_rank=3)
    np.testing.assert_array_equal(cmc, [1.0, 1.0, 1.0])
    assert mAP == 1.0


def test_cuhk03_is_deterministic_and_valid():
    rng = np.random.default_rng(8)
    problem = random_problem(rng, 40, 300, 10, 2)
    n_ids = len(np.unique(problem[2][problem[2] != -1]))
    first = eval_lib.evaluate(*problem, protocol="cuhk03", seed=3)
    again = eval_lib.evaluate(*problem, protocol="cuhk03", seed=3)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]
    assert_same(eval_lib.evaluate(*problem, protocol="cuhk03", seed=3, backend="numpy"), first)
    other = eval_lib.evaluate(*problem, protocol="cuhk03", seed=4)
    assert not np.array_equal(first[0], other[0])
    cmc = first[0]
    assert len(cmc) == 50 and np.all(np.diff(cmc) >= 0) and 0 <= cmc[0] and cmc[-1] <= 1
    assert np.all(cmc[n_ids - 1 :] == 1.0)  # the sampled gallery holds one image per identity
    assert first[1] == eval_lib.evaluate(*problem)[1]  # AP uses the full filtered gallery


def test_cuhk03_equals_market_when_every_identity_has_one_valid_image():
    rng = np.random.default_rng(9)
    n_ids = 30
    g_pids = np.concatenate([np.arange(1, n_ids + 1), [-1, -1]])
    g_cams = np.concatenate([np.zeros(n_ids, int), [0, 1]])
    q_pids = rng.integers(1, n_ids + 1, 50)
    distmat = rng.integers(0, 5, (50, len(g_pids)))
    problem = (distmat, q_pids, g_pids, np.ones(50, int), g_cams)
    assert_same(
        eval_lib.evaluate(*problem, protocol="cuhk03", num_repeats=3), eval_lib.evaluate(*problem)
    )


def exact_cuhk03_cmc(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Expected single-shot CMC by enumerating every choice of one valid image per identity."""
    identities = sorted({int(p) for p in g_pids if p != -1})
    totals, n_valid = np.zeros(max_rank), 0
    for q, (qp, qc) in enumerate(zip(q_pids, q_cams)):
        options = [
            [g for g in range(len(g_pids)) if g_pids[g] == u and not (u == qp and g_cams[g] == qc)]
            for u in identities
        ]
        if qp not in identities or not options[identities.index(qp)]:
            continue
        n_valid += 1
        combos = list(itertools.product(*options))
        for combo in combos:
            ranked = sorted(combo, key=lambda g: (distmat[q][g], g))
            rank = [g_pids[g] for g in ranked].index(qp)
            totals[rank:] += 1 / len(combos)
    return totals / n_valid


def test_cuhk03_sampling_converges_to_exact_expectation():
    rng = np.random.default_rng(10)
    g_pids = np.array([1, 1, 1, 2, 2, 3, 3, 3, -1, 4])
    g_cams = rng.integers(0, 2, len(g_pids))
    q_pids, q_cams = np.array([1, 2, 3, 1]), np.array([0, 1, 0, 1])
    distmat = rng.integers(0, 3, (4, len(g_pids))).astype(np.float32)
    problem = (distmat, q_pids, g_pids, q_cams, g_cams)
    cmc, _ = eval_lib.evaluate(*problem, max_rank=4, protocol="cuhk03", num_repeats=4000)
    np.testing.assert_allclose(cmc, exact_cuhk03_cmc(*problem, 4), atol=0.02)


def test_error_when_no_query_has_a_valid_match():
    # query 0's only match is on its own camera, query 1's identity is absent, query 2 is junk
    distmat = np.zeros((3, 3))
    with pytest.raises(ValueError, match="no query has a valid match in the gallery"):
        eval_lib.evaluate(distmat, [1, 5, -1], [1, 2, -1], [0, 0, 0], [0, 1, 1])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(distmat=np.zeros(4)), "distmat must be 2-D"),
        (dict(distmat=np.zeros((0, 4))), "at least one query"),
        (dict(distmat=[[1, 2], [3]]), "distmat must be a 2-D array of numbers"),
        (dict(distmat=np.zeros((2, 4), complex)), "real numbers"),
        (dict(q_pids=[1, 2, 3]), "q_pids has 3 entries but distmat has 2 rows"),
        (dict(g_pids=[1, 2]), "g_pids has 2 entries but distmat has 4 columns"),
        (dict(q_camids=[0]), "q_camids has 1 entries"),
        (dict(g_camids=np.zeros((4, 1), int)), "g_camids must be 1-D"),
        (dict(q_pids=[1.5, 2]), "q_pids must hold integers"),
        (dict(g_pids=["a", "b", "c", "d"]), "g_pids must hold integers"),
        (dict(max_rank=0), "max_rank must be a positive integer"),
        (dict(max_rank=2.5), "max_rank must be a positive integer"),
        (dict(num_repeats=0), "num_repeats must be a positive integer"),
        (dict(protocol="market"), "protocol must be one of"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(backend="fast"), "backend must be one of"),
        (dict(distmat=[[0.1, np.nan, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]]), "NaN"),
    ],
)
def test_bad_input_raises_clear_value_error(change, message):
    args = dict(
        distmat=np.arange(8, dtype=float).reshape(2, 4),
        q_pids=[1, 2],
        g_pids=[1, 2, 1, 2],
        q_camids=[0, 0],
        g_camids=[1, 1, 1, 1],
    )
    args.update(change)
    for backend in ("compiled", "numpy"):
        with pytest.raises(ValueError, match=message):
            eval_lib.evaluate(**{"backend": backend, **args})


def test_missing_extension_falls_back_with_one_warning():
    code = (
        "import sys, warnings\n"
        "sys.modules['eval_lib._eval_cy'] = None\n"  # makes the import fail
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import eval_lib\n"
        "assert eval_lib.CYTHON_AVAILABLE is False\n"
        "assert len(caught) == 1 and 'pip install -e .' in str(caught[0].message), caught\n"
        "assert '\\n' not in str(caught[0].message)\n"
        "cmc, mAP = eval_lib.evaluate([[0.2, 0.1]], [1], [1, 2], [0], [1, 1], max_rank=2)\n"
        "assert list(cmc) == [0.0, 1.0] and mAP == 0.5\n"
        "try:\n"
        "    eval_lib.evaluate([[0.2, 0.1]], [1], [1, 2], [0], [1, 1], backend='compiled')\n"
        "except RuntimeError as err:\n"
        "    assert 'pip install -e .' in str(err)\n"
        "else:\n"
        "    raise AssertionError('no RuntimeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- scoring a matrix handed over in blocks of queries -----------------------------------------

def split_rows(distmat, cuts):
    """The row blocks of ``distmat`` between ``cuts`` (empty blocks allowed)."""
    edges = [0, *cuts, len(distmat)]
    return [distmat[a:b] for a, b in zip(edges, edges[1:])]


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
def test_blocks_give_exactly_the_whole_matrix_result(backend):
    rng = np.random.default_rng(11)
    for dist_kind in ("float32", "float64", "int"):
        for _ in range(20):
            n_query, n_gallery = int(rng.integers(1, 40)), int(rng.integers(1, 120))
            problem = random_problem(rng, n_query, n_gallery, 8, 3, dist_kind)
            expected = naive_market(*problem, 20)
            cuts = sorted(rng.integers(0, n_query + 1, int(rng.integers(0, 5))).tolist())
            blocks = split_rows(problem[0], cuts)
            if expected is None:
                with pytest.raises(ValueError, match="no query has a valid match"):
                    eval_lib.evaluate_blocks(blocks, *problem[1:], max_rank=20, backend=backend)
                continue
            result = eval_lib.evaluate_blocks(iter(blocks), *problem[1:], max_rank=20,
                                              backend=backend)
            whole = eval_lib.evaluate(*problem, max_rank=20, backend=backend)
            assert np.array_equal(result[0], whole[0]) and result[1] == whole[1]
            assert_same(result, expected)


def test_blocks_one_row_each_and_mixed_dtypes():
    rng = np.random.default_rng(12)
    problem = random_problem(rng, 30, 200, 10, 4)
    rows = [row[None] if i % 2 else row[None].astype(np.float64)
            for i, row in enumerate(problem[0])]
    result = eval_lib.evaluate_blocks(rows, *problem[1:])
    whole = eval_lib.evaluate(*problem)
    assert np.array_equal(result[0], whole[0]) and result[1] == whole[1]


def test_blocks_that_do_not_fit_are_refused():
    rng = np.random.default_rng(13)
    distmat, q_pids, g_pids, q_cams, g_cams = random_problem(rng, 10, 50, 5, 3)
    ids = (q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match=r"shape \(4, 49\) at row 6 does not fit a 10 x 50"):
        eval_lib.evaluate_blocks([distmat[:6], distmat[6:, :49]], *ids)
    with pytest.raises(ValueError, match="blocks hold 6 rows but there are 10 queries"):
        eval_lib.evaluate_blocks([distmat[:6]], *ids)
    with pytest.raises(ValueError, match=r"at row 10 does not fit"):
        eval_lib.evaluate_blocks([distmat, distmat[:1]], *ids)
    distmat = distmat.copy()
    q_pids[7], g_pids[3] = 1, 1  # row 7 has a valid match, so its NaN is read
    g_cams[3] = q_cams[7] + 1
    distmat[7, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN \(row 7\)"):
        eval_lib.evaluate_blocks([distmat[:5], distmat[5:]], *ids)
