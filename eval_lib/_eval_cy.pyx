# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled per-query kernels behind ``eval_lib.evaluate`` (the protocol is documented there).

No gallery row is ever sorted: only the ranks of a query's true matches matter, and the rank of
a match is the number of valid gallery items ahead of it in (distance, gallery index) order.
Per query: collect and sort the few matches; scan the row once, dropping in bulk the blocks
that lie wholly behind the last match (most of a row, for a trained model) and compacting the
remaining valid non-matches ("candidates"); then count, per match, the candidates ahead of it
(a vectorisable pass per match, or a binary search per candidate when there are many matches).
Queries run in parallel with the GIL released when the build had OpenMP.

Also the two loops of k-reciprocal re-ranking (``eval_lib.rerank``): each row's nearest
neighbours and largest distance, block by block (``nearest_update``), and the Jaccard
distances of the sparse encodings (``blend_jaccard``).
"""
import numpy as np

from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define EVAL_LIB_OPENMP 1
    #define eval_lib_max_threads() omp_get_max_threads()
    #else
    #define EVAL_LIB_OPENMP 0
    #define eval_lib_max_threads() 1
    #endif
    """
    int EVAL_LIB_OPENMP
    int eval_lib_max_threads() nogil

# Whether this build runs queries on several threads.
OPENMP = bool(EVAL_LIB_OPENMP)

cdef enum:
    # Up to this many matches, counting passes over the candidates beat a binary search each.
    _PASSES_MAX_MATCHES = 64
    # Below this many distances (or CUHK03 draws) one thread beats waking a team of threads.
    _PARALLEL_MIN_WORK = 1 << 18
    # Gallery items per block of the scan; a block wholly behind the last match is skipped.
    _BLOCK = 16
    # Columns per chunk when the re-ranking pass updates the rows below a block.
    _SCAN_COLUMNS = 64

ctypedef fused dist_t:
    float
    double
    int64_t

ctypedef fused real_t:
    float
    double


cdef inline bint _isnan(dist_t x) noexcept nogil:
    if dist_t is int64_t:
        return False
    else:
        return x != x


cdef inline bint _ahead(dist_t da, int64_t ia, dist_t db, int64_t ib) noexcept nogil:
    """True if item a ranks before item b: smaller distance, ties broken by lower index."""
    return (da < db) | ((da == db) & (ia < ib))


cdef inline void _sift_down(dist_t* d, int64_t* idx, int64_t root, int64_t end) noexcept nogil:
    cdef int64_t child
    cdef dist_t td
    cdef int64_t ti
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _ahead(d[child], idx[child], d[child + 1], idx[child + 1]):
            child += 1
        if not _ahead(d[root], idx[root], d[child], idx[child]):
            return
        td = d[root]; d[root] = d[child]; d[child] = td
        ti = idx[root]; idx[root] = idx[child]; idx[child] = ti
        root = child


cdef void _sort_pairs(dist_t* d, int64_t* idx, int64_t n) noexcept nogil:
    """Heapsort (distance, index) pairs into rank order; O(n log n) even for huge identities."""
    cdef int64_t start, end
    cdef dist_t td
    cdef int64_t ti
    for start in range(n // 2 - 1, -1, -1):
        _sift_down(d, idx, start, n)
    for end in range(n - 1, 0, -1):
        td = d[0]; d[0] = d[end]; d[end] = td
        ti = idx[0]; idx[0] = idx[end]; idx[end] = ti
        _sift_down(d, idx, 0, end)


cdef inline int64_t _count_not_above(const dist_t* x, int64_t n, dist_t t) noexcept nogil:
    """Number of x[:n] <= t. Counts in 32 bits per chunk: that vectorises twice as wide."""
    cdef int64_t total = 0, start, j
    cdef unsigned int c
    for start in range(0, n, 1 << 30):
        c = 0
        for j in range(start, min(start + (1 << 30), n)):
            c += x[j] <= t
        total += c
    return total


cdef inline int64_t _count_below(const dist_t* x, int64_t n, dist_t t) noexcept nogil:
    """Number of x[:n] < t, as above."""
    cdef int64_t total = 0, start, j
    cdef unsigned int c
    for start in range(0, n, 1 << 30):
        c = 0
        for j in range(start, min(start + (1 << 30), n)):
            c += x[j] < t
        total += c
    return total


cdef void _count_by_passes(const dist_t* cd, const int64_t* ci, int64_t nc, const dist_t* md,
                           const int64_t* mi, int64_t m, int64_t* ahead) noexcept nogil:
    """ahead[k] = candidates ahead of match k, one vectorisable counting pass per match.

    Candidates are in index order, so a tie with match k is ahead exactly in the prefix of
    candidates with a lower index: count <= there and < after it.
    """
    cdef int64_t k, lo, hi, mid
    for k in range(m):
        lo = 0
        hi = nc
        while lo < hi:
            mid = (lo + hi) >> 1
            if ci[mid] < mi[k]:
                lo = mid + 1
            else:
                hi = mid
        ahead[k] = _count_not_above(cd, lo, md[k]) + _count_below(cd + lo, nc - lo, md[k])


cdef void _count_by_search(const dist_t* cd, const int64_t* ci, int64_t nc, const dist_t* md,
                           const int64_t* mi, int64_t m, int64_t* ahead) noexcept nogil:
    """ahead[k] as above via a branch-free binary search per candidate: O(nc log m), for large m.

    Needs m + 1 slots in ahead: a histogram of how many matches each candidate is behind.
    """
    cdef int64_t k, j, lo, n, half
    for k in range(m + 1):
        ahead[k] = 0
    for j in range(nc):
        lo = 0
        n = m
        while n > 1:
            half = n >> 1
            lo += half * _ahead(md[lo + half], mi[lo + half], cd[j], ci[j])
            n -= half
        lo += _ahead(md[lo], mi[lo], cd[j], ci[j])
        ahead[lo] += 1
    for k in range(1, m):
        ahead[k] += ahead[k - 1]


cdef int64_t _market_query(const dist_t* row, int64_t ng, int64_t qpid, int64_t qcam,
                           const int64_t* g_pids, const int64_t* g_cams,
                           const int64_t* group_order, int64_t gs, int64_t ge,
                           dist_t* md, int64_t* mi, dist_t* cd, int64_t* ci, int64_t* ahead,
                           double* ap) noexcept nogil:
    """Rank of the query's first match (-1: no valid match, -2: NaN in the row); sets *ap.

    md/mi hold the matches, cd/ci the candidates: valid non-matches not behind the last match.
    """
    cdef int64_t m = 0, nc = 0, k, j, i, start, stop
    cdef bint near, nan = False
    cdef dist_t d, dlast
    cdef double s = 0.0
    for k in range(gs, ge):
        j = group_order[k]
        if g_cams[j] != qcam:
            md[m] = row[j]
            mi[m] = j
            m += 1
    if m == 0:
        return -1
    for k in range(m):
        if _isnan(md[k]):
            return -2
    _sort_pairs(md, mi, m)
    dlast = md[m - 1]
    stop = 0
    while stop < ng:
        start = stop
        stop = min(start + _BLOCK, ng)
        # A vectorisable test first: most blocks lie wholly behind the last match.
        near = False
        for i in range(start, stop):
            near |= not (row[i] > dlast)
        if not near:
            continue
        # Branch-free compaction: always write, advance only for a candidate.
        for i in range(start, stop):
            d = row[i]
            nan |= _isnan(d)
            cd[nc] = d
            ci[nc] = i
            nc += (not (d > dlast)) & (g_pids[i] != qpid) & (g_pids[i] != -1)
    if nan:
        return -2
    if m <= _PASSES_MAX_MATCHES:
        _count_by_passes(cd, ci, nc, md, mi, m, ahead)
    else:
        _count_by_search(cd, ci, nc, md, mi, m, ahead)
    for k in range(m):
        s += (k + 1.0) / (k + ahead[k] + 1.0)
    ap[0] = s / m
    return ahead[0]


def market_stats(const dist_t[:, ::1] distmat, const int64_t[::1] q_pids,
                 const int64_t[::1] q_cams, const int64_t[::1] g_pids,
                 const int64_t[::1] g_cams, const int64_t[::1] group_order,
                 const int64_t[::1] q_start, const int64_t[::1] q_end, int64_t max_group,
                 int64_t[::1] first_rank, double[::1] ap):
    """Fill first_rank (-1 no valid match, -2 NaN in row) and ap for every query.

    Matches of query q are the gallery items group_order[q_start[q]:q_end[q]] (ascending index,
    all with q's pid) seen by another camera; max_group bounds any group's size.
    """
    cdef int64_t nq = distmat.shape[0], ng = distmat.shape[1], q
    cdef int nthreads = eval_lib_max_threads() if nq * ng >= _PARALLEL_MIN_WORK else 1
    cdef int tid = 0
    cdef int64_t width = max(max_group, 1)
    if dist_t is float:
        buf_dtype = np.float32
    elif dist_t is double:
        buf_dtype = np.float64
    else:
        buf_dtype = np.int64
    cdef dist_t[:, ::1] md = np.empty((nthreads, width), dtype=buf_dtype)
    cdef int64_t[:, ::1] mi = np.empty((nthreads, width), dtype=np.int64)
    cdef dist_t[:, ::1] cd = np.empty((nthreads, max(ng, 1)), dtype=buf_dtype)
    cdef int64_t[:, ::1] ci = np.empty((nthreads, max(ng, 1)), dtype=np.int64)
    cdef int64_t[:, ::1] ahead = np.empty((nthreads, width + 1), dtype=np.int64)
    if nq == 0 or ng == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        tid = threadid()
        for q in prange(nq, schedule="dynamic", chunksize=16):
            first_rank[q] = _market_query(
                &distmat[q, 0], ng, q_pids[q], q_cams[q], &g_pids[0], &g_cams[0],
                &group_order[0], q_start[q], q_end[q], &md[tid, 0], &mi[tid, 0],
                &cd[tid, 0], &ci[tid, 0], &ahead[tid, 0], &ap[q])


def cuhk03_ranks(const dist_t[:, ::1] distmat, int64_t q_offset, const int64_t[::1] q_cams,
                 const int64_t[::1] q_group, const int64_t[::1] g_cams,
                 const int64_t[::1] group_order, const int64_t[::1] group_start,
                 const double[:, :, ::1] draws, int64_t[:, ::1] ranks):
    """Rank of the sampled match in each sampled single-shot gallery, for a block of queries.

    Query q_offset + b, repeat r keeps, from every gallery identity u, member
    floor(draws[b, r, u] * size) of its valid images in index order (for the query's own
    identity q_group only the images from other cameras). ranks[b, r] = -1 without a match.
    """
    cdef int64_t nb = draws.shape[0], nr = draws.shape[1], ngroups = draws.shape[2]
    cdef int64_t b, r, u, k, j, m, size, gm, idx, count, g, qcam, nmax = 0
    cdef const dist_t* row
    cdef dist_t dm
    cdef int nthreads = eval_lib_max_threads() if nb * nr * ngroups >= _PARALLEL_MIN_WORK else 1
    cdef int tid = 0
    for u in range(ngroups):
        nmax = max(nmax, group_start[u + 1] - group_start[u])
    cdef int64_t[:, ::1] mi = np.empty((nthreads, max(nmax, 1)), dtype=np.int64)
    if nb == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        tid = threadid()
        for b in prange(nb, schedule="dynamic", chunksize=4):
            row = &distmat[q_offset + b, 0]
            g = q_group[q_offset + b]
            qcam = q_cams[q_offset + b]
            m = 0
            if g >= 0:
                for k in range(group_start[g], group_start[g + 1]):
                    j = group_order[k]
                    if g_cams[j] != qcam:
                        mi[tid, m] = j
                        m = m + 1
            for r in range(nr):
                if m == 0:
                    ranks[b, r] = -1
                    continue
                j = <int64_t>(draws[b, r, g] * m)
                gm = mi[tid, min(j, m - 1)]
                dm = row[gm]
                count = 0
                for u in range(ngroups):
                    if u == g:
                        continue
                    size = group_start[u + 1] - group_start[u]
                    j = min(<int64_t>(draws[b, r, u] * size), size - 1)
                    idx = group_order[group_start[u] + j]
                    if _ahead(row[idx], idx, dm, gm):
                        count = count + 1
                ranks[b, r] = count


def blend_jaccard(const int64_t[::1] q_ptr, const int64_t[::1] q_idx, const double[::1] q_val,
                  const int64_t[::1] c_ptr, const int64_t[::1] c_row, const double[::1] c_val,
                  const double[::1] q_sum, const double[::1] g_sum, double lam,
                  real_t[:, ::1] out):
    """The last step of k-reciprocal re-ranking (eval_lib.rerank), in place:
    ``out[i, g] = (1 - lam) * (1 - s / (q_sum[i] + g_sum[g] - s)) + lam * out[i, g]`` with
    ``s = sum_j min(V_i[j], V_g[j])``, i.e. the Jaccard distance of the two sparse encodings.

    Query rows V_i come as CSR (q_ptr, q_idx, q_val), gallery rows by column as CSC (c_ptr,
    c_row, c_val); only pairs sharing a column are visited. q_sum, g_sum: the rows' sums.
    """
    cdef int64_t nq = out.shape[0], ng = out.shape[1], i, a, b, j, g
    cdef double v, w, s
    cdef int nthreads = eval_lib_max_threads() if nq * ng >= _PARALLEL_MIN_WORK else 1
    cdef int tid = 0
    cdef double[:, ::1] acc = np.zeros((nthreads, max(ng, 1)), dtype=np.float64)
    if nq == 0 or ng == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        tid = threadid()
        for i in prange(nq, schedule="dynamic", chunksize=16):
            for a in range(q_ptr[i], q_ptr[i + 1]):
                j = q_idx[a]
                v = q_val[a]
                for b in range(c_ptr[j], c_ptr[j + 1]):
                    w = c_val[b]
                    acc[tid, c_row[b]] += v if v < w else w
            for g in range(ng):
                s = acc[tid, g]
                acc[tid, g] = 0
                out[i, g] = <real_t>((1 - lam) * (1 - s / (q_sum[i] + g_sum[g] - s))
                                     + lam * out[i, g])


cdef inline bint _after(real_t da, int64_t ia, real_t db, int64_t ib) noexcept nogil:
    """True if item a ranks after item b: larger distance, ties broken by larger index."""
    return (da > db) | ((da == db) & (ia > ib))


cdef inline void _offer(real_t* hd, int64_t* hi, int64_t k, real_t d, int64_t idx) noexcept nogil:
    """Keep the k first items in (distance, index) order in the max-heap (hd, hi)."""
    cdef int64_t pos = 0, child
    if not _after(hd[0], hi[0], d, idx):
        return
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and _after(hd[child + 1], hi[child + 1], hd[child], hi[child]):
            child += 1
        if not _after(hd[child], hi[child], d, idx):
            break
        hd[pos] = hd[child]
        hi[pos] = hi[child]
        pos = child
    hd[pos] = d
    hi[pos] = idx


def nearest_update(const real_t[:, ::1] dots, const real_t[::1] sq, int64_t a0,
                   real_t[:, ::1] best_d, int64_t[:, ::1] best_i, real_t[::1] row_max):
    """One block of the dense pass of k-reciprocal re-ranking (eval_lib.rerank).

    ``dots`` holds the dot products of images a0..a0+B-1 with images a0..n-1. The distances
    ``max(sq[x] + sq[y] - 2 * dot, 0)`` update the rows a0..a0+B-1 (every column) and, by
    symmetry, the rows a0+B..n-1 (columns a0..a0+B-1): each row keeps its largest distance and
    its k first neighbours in (distance, index) order, as a max-heap in (best_d, best_i), which
    start filled with (inf, n) sentinels.
    """
    cdef int64_t nb = dots.shape[0], width = dots.shape[1], k = best_d.shape[1]
    cdef int64_t r, j, c, lo, hi, chunk, row
    cdef real_t d, top
    cdef int nthreads = eval_lib_max_threads() if nb * width >= _PARALLEL_MIN_WORK else 1
    cdef int64_t nchunks = (width - nb + _SCAN_COLUMNS - 1) // _SCAN_COLUMNS
    with nogil, parallel(num_threads=nthreads):
        for r in prange(nb, schedule="static"):
            row = a0 + r
            top = row_max[row]
            for j in range(width):
                d = sq[row] + sq[a0 + j] - 2 * dots[r, j]
                d = d if d > 0 else 0
                top = d if d > top else top
                _offer(&best_d[row, 0], &best_i[row, 0], k, d, a0 + j)
            row_max[row] = top
        # rows below the block, each owned by one thread: one chunk of columns at a time
        for chunk in prange(nchunks, schedule="dynamic"):
            lo = nb + chunk * _SCAN_COLUMNS
            hi = min(lo + _SCAN_COLUMNS, width)
            for r in range(nb):
                for j in range(lo, hi):
                    c = a0 + j
                    d = sq[a0 + r] + sq[c] - 2 * dots[r, j]
                    d = d if d > 0 else 0
                    if d > row_max[c]:
                        row_max[c] = d
                    _offer(&best_d[c, 0], &best_i[c, 0], k, d, a0 + r)


def pair_distances(const real_t[:, ::1] feats, const real_t[::1] sq, const int64_t[::1] rows,
                   const int64_t[::1] cols, real_t[::1] out):
    """``out[i] = max(sq[x] + sq[y] - 2 * feats[x] . feats[y], 0)`` for x = rows[i], y = cols[i]:
    the distances of re-ranking's weights that its dense pass did not keep."""
    cdef int64_t n = rows.shape[0], dim = feats.shape[1], i, j, x, y
    cdef double dot, d
    cdef int nthreads = eval_lib_max_threads() if n * dim >= _PARALLEL_MIN_WORK else 1
    with nogil, parallel(num_threads=nthreads):
        for i in prange(n, schedule="static"):
            x = rows[i]
            y = cols[i]
            dot = 0
            for j in range(dim):
                dot = dot + feats[x, j] * feats[y, j]
            d = sq[x] + sq[y] - 2 * dot
            out[i] = <real_t>(d if d > 0 else 0)
