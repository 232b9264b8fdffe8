"""Row blocks: how every kernel splits the samples between threads and BLAS.

Samples are independent, so the kernels split the ``n`` rows of ``Z``, ``X``,
``U`` into blocks of :func:`block_rows` rows and hand whole blocks to
numba's threads (``prange``); inside a block one single-threaded BLAS call
does the gemm and the elementwise pass follows while the block is in cache.
The callers in the public API run the kernels under
:func:`deqbench._threads.blas_single_threaded`, so BLAS never starts threads
of its own inside a parallel region.

Why (``python -m tools.calibrate``; figures, machine and command in
``results/calibrate/README.md``): one BLAS call on the
whole batch with BLAS's own threads pays a thread hand-off per call and
streams the batch through memory once for the gemm and again for the pass,
while blocks keep both threads busy on cache-resident rows.

The block rows, the small-gemm bound, the parallel crossover of element passes
and the gemm itself are settings, read at run time from the ``tune`` vector
(``TUNE_*`` below; ``deqbench calibrate`` measures them, ``deqbench info``
shows them): the constants here are their built-in values.
"""

from __future__ import annotations

import numpy as np

from .._blas import small_gemm_mnk
from .._jit import jit, prange, twins
from .cblas import cblas_gemm

#: Target bytes of one ``rows x m`` float64 block of one array, and the
#: bounds on its rows: past it the blocks of Z, U and T plus BLAS's packing
#: buffers outgrow L2 and map evaluations fall off a cliff; wide ``m`` needs
#: ``MIN_ROWS`` rows. Set by ``python -m tools.calibrate`` on the
#: calibration machine (figures: ``results/calibrate/README.md``).
BLOCK_BYTES = 1 << 16
MIN_ROWS = 128
MAX_ROWS = 1024

#: Wide widths: each block's gemm packs all of the ``m x m`` matrix again;
#: once it (``8 m^2`` bytes) passes ``WIDE_BYTES`` it no longer sits in L2 and
#: a block needs ``WIDE_ROWS`` rows to amortise the packing (``python -m
#: tools.calibrate --blocks 256,1024``, figures in
#: ``results/calibrate/README.md``). Never fewer than two blocks from wide rows
#: alone (n < 1024: n / 2 rows, as before at n = 256).
WIDE_BYTES = 1 << 19
WIDE_ROWS = 512

#: Element passes without a gemm (losses, Anderson's mixing and Gram products)
#: go parallel from this many elements on; below it a parallel region costs
#: more than the pass (same command as ``BLOCK_BYTES``; ``results/calibrate/README.md``).
PASS_PARALLEL_MIN = 1 << 14


@jit(inline="always")
def flat(a):
    """A C-contiguous block of rows as one 1-D view: element passes run as one
    flat loop per block, not a loop per row (at small ``m`` the per-row loop
    set-up costs more than the arithmetic; ``results/calibrate/README.md``)."""
    return a.reshape(a.size)


#: Unpacked small gemm (:func:`deqbench._blas.small_gemm_mnk`): where the
#: BLAS multiplies ``rows x m`` by ``m x m`` without packing while ``rows m^2 <=
#: SMALL_GEMM_MNK``, blocks of ``m`` from about 89 to 353 take the most rows,
#: a multiple of 4, that keep it (at least ``SMALL_MIN_ROWS``): 108 rows at
#: m = 96, 60 at 128, 24 at 192, 12 at 256, 8 at 320 (narrower ``m`` already
#: fits with the byte rule; wider has fewer than 8 rows, not faster).
#: Rows not a multiple of 4, or one row past the bound, fall off the small
#: path. Set by ``python -m tools.calibrate --small-gemm`` (a plain gemm
#: loop by rows) and ``--picard`` on the calibration machine (figures:
#: ``results/calibrate/README.md``). A transposed right operand leaves the
#: small path (OpenBLAS's permit): :func:`gemm_rows` copies it.
SMALL_GEMM_MNK = small_gemm_mnk()
SMALL_MIN_ROWS = 8

# --- the settings vector ----------------------------------------------------
# The constants above are the built-in defaults. What the kernels run with
# comes in at run time as ``tune``, an int64 vector of TUNE_LEN entries
# (deqbench._calibration builds it from the defaults, a calibration file and
# the environment), so a new calibration recompiles nothing; ``tune=None``
# (callers that pass none: tests, benchmarks) means the defaults.
TUNE_BLOCK_BYTES = 0
TUNE_MIN_ROWS = 1
TUNE_MAX_ROWS = 2
TUNE_WIDE_BYTES = 3
TUNE_WIDE_ROWS = 4
TUNE_SMALL_GEMM_MNK = 5
TUNE_SMALL_MIN_ROWS = 6
TUNE_PASS_PARALLEL_MIN = 7
TUNE_GEMM = 8
"""Which gemm the row-block kernels call: :data:`GEMM_BLAS` or :data:`GEMM_CBLAS`."""
TUNE_DGEMM = 9
"""Address of ``cblas_dgemm`` (``GEMM_CBLAS``), 0 otherwise; a run-time value,
never compiled in, so the on-disk kernel cache stays valid across processes."""
TUNE_SGEMM = 10
"""Address of ``cblas_sgemm``, as :data:`TUNE_DGEMM`."""
TUNE_LEN = 11

GEMM_BLAS = 0
"""numba's ``np.dot``: the BLAS SciPy ships (OpenBLAS from the wheels)."""
GEMM_CBLAS = 1
"""``cblas_dgemm`` / ``cblas_sgemm`` at the addresses of the vector (MKL's)."""


def default_tune() -> np.ndarray:
    """The settings vector of the built-in defaults (the constants above)."""
    tune = np.zeros(TUNE_LEN, np.int64)
    tune[TUNE_BLOCK_BYTES] = BLOCK_BYTES
    tune[TUNE_MIN_ROWS] = MIN_ROWS
    tune[TUNE_MAX_ROWS] = MAX_ROWS
    tune[TUNE_WIDE_BYTES] = WIDE_BYTES
    tune[TUNE_WIDE_ROWS] = WIDE_ROWS
    tune[TUNE_SMALL_GEMM_MNK] = SMALL_GEMM_MNK
    tune[TUNE_SMALL_MIN_ROWS] = SMALL_MIN_ROWS
    tune[TUNE_PASS_PARALLEL_MIN] = PASS_PARALLEL_MIN
    tune[TUNE_GEMM] = GEMM_BLAS
    return tune


@jit(inline="always")
def _packed(n, width, block_bytes, min_rows, max_rows, wide_bytes, wide_rows):
    r = block_bytes // (8 * max(width, 1))
    r = max(min_rows, min(max_rows, r))
    if 8 * width * width > wide_bytes:
        # wide, but at least two blocks where n allows (both cores of the
        # calibration machine busy at small n)
        r = max(r, min(wide_rows, (n + 1) // 2))
    return max(min(r, max(n, 1)), 1)


@jit(inline="always")
def _small(n, width, r, small_mnk, small_min):
    w2 = max(width, 1) * max(width, 1)
    if small_mnk > 0 and r * w2 > small_mnk:
        s = small_mnk // w2 // 4 * 4
        if s >= small_min:
            r = min(s, max(n, 1))
    return r


@jit
def packed_rows(n, width, tune=None):
    """Rows per block by bytes alone (:data:`BLOCK_BYTES`, :data:`MIN_ROWS`,
    :data:`MAX_ROWS`, the wide rule), for gemms BLAS packs; the settings of
    ``tune`` when given."""
    if tune is None:
        return _packed(n, width, BLOCK_BYTES, MIN_ROWS, MAX_ROWS, WIDE_BYTES, WIDE_ROWS)
    return _packed(n, width, tune[TUNE_BLOCK_BYTES], tune[TUNE_MIN_ROWS], tune[TUNE_MAX_ROWS],
                   tune[TUNE_WIDE_BYTES], tune[TUNE_WIDE_ROWS])


@jit
def group_rows(n, width):
    """Rows of Picard's stopping groups (:func:`~.fixed_point.picard`): the
    built-in rule of :func:`block_rows`, whatever the settings in force, so
    that no result depends on the calibration (docs/theory.md §3)."""
    r = _packed(n, width, BLOCK_BYTES, MIN_ROWS, MAX_ROWS, WIDE_BYTES, WIDE_ROWS)
    return _small(n, width, r, SMALL_GEMM_MNK, SMALL_MIN_ROWS)


@jit
def block_rows(n, width, tune=None):
    """Rows per block for arrays of ``width`` float64 columns whose gemm is
    ``rows x width`` times ``width x width`` or narrower, untransposed:
    :func:`packed_rows`, fewer where that keeps BLAS on its unpacked small
    path (:data:`SMALL_GEMM_MNK`). float32 blocks get the same rows: half the
    bytes, and OpenBLAS's single-precision path has the same bound. The
    settings of ``tune`` when given, else the built-in ones."""
    if tune is None:
        return group_rows(n, width)
    r = packed_rows(n, width, tune)
    return _small(n, width, r, tune[TUNE_SMALL_GEMM_MNK], tune[TUNE_SMALL_MIN_ROWS])


@jit
def pass_parallel(size, tune=None):
    """Whether an element pass over ``size`` elements runs on numba's threads
    (:data:`PASS_PARALLEL_MIN`, or the setting of ``tune``)."""
    if tune is None:
        return size >= PASS_PARALLEL_MIN
    return size >= tune[TUNE_PASS_PARALLEL_MIN]


@jit(inline="always")
def _unit_rows(a):
    """Leading dimension of a 2-D array whose rows are contiguous (0 if they are not)."""
    isz = a.itemsize
    if a.shape[1] == 1 or a.strides[1] == isz:
        lead = a.strides[0] // isz
        if a.shape[0] == 1:
            lead = max(lead, a.shape[1])
        if lead >= max(a.shape[1], 1) and lead * isz == a.strides[0]:
            return lead
    return 0


@jit
def gemm(a, b, out, tune=None):
    """``out <- a @ b`` (2-D, one dtype): numba's ``np.dot``, or the CBLAS gemm
    whose address ``tune`` holds when its :data:`TUNE_GEMM` is
    :data:`GEMM_CBLAS` (operands whose rows are not contiguous, and empty
    products, stay with ``np.dot``). Every gemm of the row-block kernels goes
    through here."""
    if tune is not None:
        if tune[TUNE_GEMM] == GEMM_CBLAS:
            m, k = a.shape
            n = b.shape[1]
            lda = _unit_rows(a)
            ldb = _unit_rows(b)
            ldc = _unit_rows(out)
            addr = tune[TUNE_DGEMM] if a.itemsize == 8 else tune[TUNE_SGEMM]
            if m > 0 and n > 0 and k > 0 and lda > 0 and ldb > 0 and ldc > 0 and addr != 0:
                cblas_gemm(addr, m, n, k, a, lda, b, ldb, out, ldc)
                return
    np.dot(a, b, out)


def _gemm_rows(P, Q, out, rows, tune=None):
    n = P.shape[0]
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        gemm(P[i0:i1], Q, out[i0:i1], tune)


_gemm_rows_s, _gemm_rows_p = twins(_gemm_rows)


@jit
def _gemm_by_blocks(P, Q, out, tune):
    n = P.shape[0]
    rows = block_rows(n, max(P.shape[1], Q.shape[1]), tune)
    if n > rows:
        _gemm_rows_p(P, Q, out, rows, tune)
    else:
        _gemm_rows_s(P, Q, out, rows, tune)


@jit
def gemm_rows(P, Q, out, tune=None):
    """``out <- P @ Q`` block by block of rows of ``P`` (``n x k`` times ``k x m``;
    :func:`block_rows` of ``tune``, each block's product by :func:`gemm`).

    A ``Q`` that is not C-contiguous (a transposed matrix) is copied first, a
    ``k x m`` copy against ``2 n k m`` flops: OpenBLAS's small path refuses a
    transposed right operand, and the copy lets the blocks take it (faster from
    m = 64 to 256, level at 512: ``results/calibrate/README.md``)."""
    if Q.flags.c_contiguous:
        _gemm_by_blocks(P, Q, out, tune)
    else:
        _gemm_by_blocks(P, np.ascontiguousarray(Q), out, tune)


def _gemm_tn(P, Q, out, work, chunk):
    """Share ``c`` of the rows: ``P_c^T Q_c`` into ``out`` (``c = 0``) or ``work[c - 1]``."""
    n = P.shape[0]
    for c in prange(work.shape[0] + 1):
        i0 = c * chunk
        i1 = min(i0 + chunk, n)
        dst = out if c == 0 else work[c - 1]
        if i1 > i0:
            np.dot(P[i0:i1].T, Q[i0:i1], dst)
        else:
            dst[:, :] = 0.0


_gemm_tn_s, _gemm_tn_p = twins(_gemm_tn)


#: ``gemm_tn`` splits the samples into one share per numba thread, or more
#: while the partial products stay within ``PARTS_BYTES`` (at most
#: ``MAX_PARTS``, each of at least ``MIN_ROWS`` rows): BLAS is slow on a long
#: inner dimension, so narrow ``m`` gains from more shares than threads. Set by
#: ``python -m tools.calibrate --gemm-tn`` on the calibration machine
#: (figures: ``results/calibrate/README.md``).
MAX_PARTS = 16
PARTS_BYTES = 1 << 20


@jit
def tn_parts(n, m, k, threads):
    """Shares of the ``n`` rows :func:`gemm_tn` sums over (1: one BLAS call)."""
    parts = max(threads, PARTS_BYTES // (8 * m * k))
    return max(1, min(MAX_PARTS, n // MIN_ROWS, parts))


@jit
def gemm_tn(P, Q, out, threads):
    """``out <- P^T Q`` (``n x m``, ``n x k`` -> ``m x k``), a sum over samples:
    partial products over contiguous shares of the rows (:func:`tn_parts`), in
    parallel, then their sum (``parts - 1`` partials of ``m x k`` floats).
    ``threads``: numba's thread count (``numba.get_num_threads()``, which a
    cached kernel cannot call)."""
    n, m = P.shape
    k = Q.shape[1]
    parts = tn_parts(n, m, k, threads)
    if parts < 2 or n * (m + k) < PASS_PARALLEL_MIN:
        np.dot(P.T, Q, out)
        return
    chunk = (n + parts - 1) // parts
    work = np.empty((parts - 1, m, k), out.dtype)
    _gemm_tn_p(P, Q, out, work, chunk)
    for c in range(parts - 1):
        out += work[c]
