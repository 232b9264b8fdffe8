"""Re-measure the size thresholds of the kernels on this machine.

    python -m tools.calibrate [--strict]

It waits for a quiet machine and ends with the quiet check's summary line
(``tools/quietly.py``: ``--strict`` exits 4 when the run was NOISY).

* ``BLOCK_BYTES`` (``deqbench/_kernels/blocks.py``): bytes of one row block of
  one array. For each width ``m`` it times one map evaluation (row-block gemm
  + fused pass, numba's threads over the blocks, BLAS single-threaded) at
  n = 8192 for block sizes from 16 KiB to 1 MiB, next to numpy's matmul of the
  same shapes (all BLAS threads), and prints the best block size per width.
* ``BLOCK_BYTES`` for the block-resident Picard iteration (``--picard``):
  ``fixed_point.picard`` (64 evaluations, tol 0, identity and tanh) at
  n = 8192 by block size, next to the block size in force (its own column
  when it is none of the sizes: the small-gemm rule's rows), each block
  iterated in cache 32 evaluations a visit.
* ``SMALL_GEMM_MNK``, ``SMALL_MIN_ROWS`` (``--small-gemm``): a plain loop of
  one-thread gemms over row blocks (``rows x m`` times ``m x m``, n = 8192)
  by rows per block, ``s`` where ``rows m^2 <= SMALL_GEMM_MNK`` (BLAS's
  unpacked small path, where it has one), ``*`` at the rows in force.
* ``PASS_PARALLEL_MIN``: the element count from which the parallel twin of an
  element pass (``residual_loss``) beats the serial one.
* How the second core pays: ``fixed_point`` at m = 256, n = 65536 on all of
  numba's threads against one.
* ``MAX_PARTS``, ``PARTS_BYTES`` (``deqbench/_kernels/blocks.py``): how many
  shares of the rows ``gemm_tn`` (``P^T Q``, the parameter gradients) sums
  over: its time for 1 to 32 shares (partials preallocated) at n = 8192, next
  to one ``np.dot`` and to ``gemm_tn`` itself (``--gemm-tn`` prints this alone).
* ``CERT_SQUARING_BUDGET`` (``deqbench/_kernels/model.py``): the price of the
  certificate's eigendecomposition (``_refresh``) in gemms of the same ``m``
  (``np.matmul``, all BLAS threads), measured, next to the flop model's price
  that sets the budget (``--refresh`` prints this table alone).
* ``SETTLE_S`` (``tools/peers/timing.py``): the pause before every timed
  batch of the peer tables. A map evaluation at m = 16 (numba's threads) timed
  after a pause of 0 to 0.5 s that follows a multi-threaded ``np.matmul``, and
  the other way round (``--settle`` prints this table alone).

Timings are the minimum of repeated calls in this process; run it on a quiet
machine, and put the machine, the command and the quiet line next to the
constants when you change them.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from deqbench._kernels import blocks as bl
from deqbench._kernels import fixed_point as fp
from deqbench._kernels import gradients as g
from deqbench._kernels.activations import IDENTITY
from deqbench._kernels.blocks import SMALL_GEMM_MNK, block_rows
from deqbench._threads import single_threaded_blas

BLOCKS = [1 << k for k in range(14, 24)]
WIDTHS = [16, 32, 64, 256, 1024]


def best(fn, *, reps: int = 30, budget: float = 2.0) -> float:
    fn()
    times = []
    t_end = time.perf_counter() + budget
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() > t_end and len(times) >= 3:
            break
    return min(times)


def _rows(block_bytes: int, m: int, n: int) -> int:
    """Rows of a ``block_bytes`` block of ``m`` float64 columns, within ``1..n``."""
    return max(1, min(n, block_bytes // (8 * m)))


def blocks_table(n: int, widths=WIDTHS) -> None:
    print(f"map evaluation, n = {n}: GFLOP/s by block size (KiB); numpy matmul for reference")
    print("m     " + " ".join(f"{b >> 10:>6}" for b in BLOCKS) + "  matmul  best")
    rng = np.random.default_rng(0)
    for m in widths:
        Z = rng.standard_normal((n, m))
        M = rng.standard_normal((m, m)) / m
        U = rng.standard_normal((n, m))
        T = np.empty_like(Z)
        D = np.zeros((1, 1))
        flops = 2.0 * n * m * m
        rates = []
        for b in BLOCKS:
            rows = _rows(b, m, n)
            with single_threaded_blas():
                t = best(partial(fp._evaluate_p, Z, M, U, IDENTITY, 0.0, D, T, 1.0, rows))
            rates.append(flops / t / 1e9)
        t_mm = best(partial(np.matmul, Z, M, out=T))
        top = BLOCKS[int(np.argmax(rates))] >> 10
        print(f"{m:<5} " + " ".join(f"{r:6.1f}" for r in rates)
              + f"  {flops / t_mm / 1e9:6.1f}  {top} KiB")


def _picard_from_zero(Z, M, U, code, D, T, evaluations, hist, threads, rows):
    Z[:] = 0.0
    fp.picard(Z, M, U, code, 0.0, D, T, 0.0, evaluations, 1.0, hist, threads, rows)


def picard_table(n: int, widths=WIDTHS, evaluations: int = 64) -> None:
    """GFLOP/s of block-resident Picard (``evaluations`` map evaluations, tol 0)
    by block size in KiB, for the identity and tanh; ``*`` marks the block size
    in force (:func:`~deqbench._kernels.blocks.block_rows`)."""
    import numba

    from deqbench._kernels.activations import TANH

    threads = numba.get_num_threads()
    sizes = BLOCKS[:7]
    print(f"block-resident picard, n = {n}, {evaluations} evaluations: GFLOP/s by block size (KiB)")
    print("m     map   " + " ".join(f"{b >> 10:>6}" for b in sizes)
          + "  in force (rows: GFLOP/s)")
    rng = np.random.default_rng(4)
    for m in widths:
        M = rng.standard_normal((m, m)) * (0.5 / np.sqrt(m))
        U = rng.standard_normal((n, m))
        Z, T, D = np.empty_like(U), np.empty_like(U), np.zeros((1, 1))
        hist = np.empty(evaluations + 2)
        flops = 2.0 * n * m * m * (evaluations + 1)
        force = block_rows(n, m)
        size_rows = [_rows(b, m, n) for b in sizes]
        for code, name in ((IDENTITY, "id"), (TANH, "tanh")):
            rates = {}
            for rows in size_rows + [force]:
                if rows not in rates:
                    with single_threaded_blas():
                        t = best(partial(_picard_from_zero, Z, M, U, code, D, T, evaluations,
                                         hist, threads, rows), reps=10)
                    rates[rows] = flops / t / 1e9
            cells = [f"{rates[r]:6.1f}" + ("*" if r == force else " ") for r in size_rows]
            print(f"{m:<5} {name:<5} " + "".join(cells) + f"  {force}: {rates[force]:.1f}",
                  flush=True)


def _gemm_blocks(Z, M, T, rows, reps):
    """``reps`` one-thread passes of the kernels' own row-block gemm (its serial twin)."""
    for _ in range(reps):
        bl._gemm_rows_s(Z, M, T, rows)


def small_gemm_table(n: int, widths=(64, 96, 128, 192, 256, 320, 384, 512)) -> None:
    """GFLOP/s of one-thread gemms over row blocks by rows per block: multiples of
    4 and their neighbours up to the small-path bound, one past it, 32 and 128."""
    print(f"row-block gemm, n = {n}, one thread: GFLOP/s by rows per block "
          f"(s: rows m^2 <= SMALL_GEMM_MNK = {SMALL_GEMM_MNK}; *: rows in force)")
    rng = np.random.default_rng(5)
    for m in widths:
        Z = rng.standard_normal((n, m))
        M = rng.standard_normal((m, m))
        T = np.empty_like(Z)
        bound = SMALL_GEMM_MNK // (m * m)
        force = block_rows(n, m)
        rows = sorted({r for r in (4, 5, 8, 9, 12, 16, 24) if r <= bound}
                      | {r for r in (bound, bound + 1) if r > 0} | {32, 128, force})
        reps = max(1, int(1e9 // (n * m * m)))
        cells = []
        for r in rows:
            with single_threaded_blas():
                t = best(partial(_gemm_blocks, Z, M, T, r, reps), reps=5)
            cells.append(f"{r}:{2.0 * n * m * m * reps / t / 1e9:.1f}"
                         + ("s" if r * m * m <= SMALL_GEMM_MNK else "")
                         + ("*" if r == force else ""))
        print(f"{m:<5} " + " ".join(cells), flush=True)


def pass_table(max_log: int = 22) -> None:
    print("element pass (residual_loss): serial / parallel time")
    rng = np.random.default_rng(1)
    for k in range(12, max_log + 1, 2):
        n = (1 << k) // 16
        Z = rng.standard_normal((n, 16))
        Y = rng.standard_normal((n, 16))
        G = np.empty_like(Z)
        rows = block_rows(n, 16)
        ts = best(partial(g._residual_loss_s, Z, Y, G, rows))
        tp = best(partial(g._residual_loss_p, Z, Y, G, rows))
        print(f"2^{k:<3} elements: {ts * 1e6:9.1f} us serial, {tp * 1e6:9.1f} us parallel, "
              f"ratio {ts / tp:5.2f}")


def scaling(m: int = 256, n: int = 65536) -> None:
    """``fixed_point`` on all numba threads against one thread, same process."""
    import numba

    import deqbench as db

    X, _, _ = db.data.linear_teacher(n, m, m, seed=0)
    A, B = db.data.init_params(m, m, scale_A=0.5, scale_B=1.0, seed=1)
    call = partial(db.fixed_point, X, A, B, tol=1e-10)
    threads = numba.get_num_threads()
    t_all = best(call, reps=5)
    numba.set_num_threads(1)
    try:
        t_one = best(call, reps=5)
    finally:
        numba.set_num_threads(threads)
    print(f"fixed_point m = {m}, n = {n}: {t_one:.3f} s on 1 thread, {t_all:.3f} s on "
          f"{threads}: {t_one / t_all:.2f}x")


def gemm_tn_table(n: int, widths=(32, 64, 256, 1024)) -> None:
    import numba

    threads = numba.get_num_threads()
    print(f"gemm_tn P^T Q (n = {n}, m = k): ms by number of shares of the rows "
          "(partials preallocated), one np.dot, gemm_tn as it runs")
    print("m      np.dot " + " ".join(f"{p:>7}" for p in (1, 2, 4, 8, 16, 32))
          + "  gemm_tn (shares)")
    rng = np.random.default_rng(3)
    for m in widths:
        P = rng.standard_normal((n, m))
        Q = rng.standard_normal((n, m))
        out = np.empty((m, m))
        cells = []
        for parts in (1, 2, 4, 8, 16, 32):
            if (parts - 1) * m * m * 8 > 1 << 27:
                cells.append(f"{'-':>7}")
                continue
            chunk = (n + parts - 1) // parts
            work = np.empty((parts - 1, m, m))

            def run(P=P, Q=Q, out=out, work=work, chunk=chunk):
                bl._gemm_tn_p(P, Q, out, work, chunk)
                for c in range(work.shape[0]):
                    out.__iadd__(work[c])

            with single_threaded_blas():
                cells.append(f"{best(run, reps=10) * 1e3:7.2f}")
        with single_threaded_blas():
            t_tn = best(partial(bl.gemm_tn, P, Q, out, threads), reps=10)
        t_dot = best(partial(np.dot, P.T, Q, out), reps=10)
        print(f"{m:<6d} {t_dot * 1e3:6.2f} " + " ".join(cells)
              + f"  {t_tn * 1e3:7.2f} ({bl.tn_parts(n, m, m, threads)})", flush=True)


def refresh_table(widths=(16, 32, 64, 128, 256, 512, 1024)) -> list[tuple[int, float, float]]:
    """The certificate's eigendecomposition against a gemm: ``(m, measured
    price in gemms, flop-model price)`` per width, printed as it goes."""
    from deqbench._kernels import model as _m
    from deqbench._training import certificate_flops

    print("certificate refresh (eigendecomposition + reference norms) in gemms of the same m")
    print("m      refresh ms   gemm ms   measured price   flop-model price")
    rng = np.random.default_rng(2)
    one = np.zeros(_m.CERT_COUNTS, np.int64)
    one[_m.CERT_BY_EIG] = 1
    rows = []
    for m in widths:
        A = rng.standard_normal((m, m)) * (0.9 / np.sqrt(m))
        Mc = np.empty((m, m), np.complex128)
        A_ref = np.empty((m, m))
        ref = np.full(_m._REF_LEN, np.nan)
        t_ref = best(partial(_m._refresh, A, 1.0, Mc, A_ref, ref), reps=10)
        P = np.empty((m, m))
        t_gemm = best(partial(np.matmul, A, A, out=P), reps=200)
        model = certificate_flops(m, one) / (2.0 * m**3)
        rows.append((m, t_ref / t_gemm, model))
        print(f"{m:<6d} {t_ref * 1e3:10.3f} {t_gemm * 1e3:9.4f} {t_ref / t_gemm:16.0f} "
              f"{model:18.0f}", flush=True)
    print(f"CERT_SQUARING_BUDGET in force: {_m.CERT_SQUARING_BUDGET}")
    return rows


def settle_table(n: int, m: int = 16, calls: int = 200, trials: int = 5) -> None:
    """Per-call time of a short numba-parallel map evaluation right after a
    multi-threaded numpy gemm, and of a numpy gemm right after the evaluation,
    against the pause between them (medians of ``trials``)."""
    rng = np.random.default_rng(3)
    Z, U = rng.standard_normal((n, m)), rng.standard_normal((n, m))
    M = rng.standard_normal((m, m)) / m
    T, D = np.empty((n, m)), np.zeros((1, 1))
    big, big_out = rng.standard_normal((512, 512)), np.empty((512, 512))
    Zg, Mg, Tg = rng.standard_normal((n, 64)), rng.standard_normal((64, 64)), np.empty((n, 64))

    def evaluate():
        with single_threaded_blas():  # as the public calls run it
            fp.evaluate(Z, M, U, IDENTITY, 0.0, D, T, 1.0)

    def gemm():
        np.matmul(Zg, Mg, out=Tg)

    def per_call(fn):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t) / calls

    evaluate(), gemm()
    time.sleep(0.5)
    alone = per_call(evaluate), per_call(gemm)
    print(f"pause before timing (s); us per call of a map evaluation (m = {m}, n = {n}) "
          f"after a 2-thread np.matmul, and of np.matmul (m = 64) after the evaluation")
    print(f"alone: evaluation {alone[0] * 1e6:.0f} us, np.matmul {alone[1] * 1e6:.0f} us")
    for gap in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5):
        a, b = [], []
        for _ in range(trials):
            time.sleep(0.5)
            np.matmul(big, big, out=big_out)
            time.sleep(gap)
            a.append(per_call(evaluate))
            time.sleep(0.5)
            evaluate()
            time.sleep(gap)
            b.append(per_call(gemm))
        print(f"{gap:4.2f}  evaluation {np.median(a) * 1e6:6.0f} us   "
              f"np.matmul {np.median(b) * 1e6:6.0f} us", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--refresh", action="store_true",
                    help="only the certificate's refresh price (seconds)")
    ap.add_argument("--gemm-tn", action="store_true", help="only the gemm_tn shares table")
    ap.add_argument("--settle", action="store_true",
                    help="only the pause-after-BLAS table (SETTLE_S)")
    ap.add_argument("--picard", default=None, metavar="M1,M2",
                    help="only the block-resident Picard table, at these widths")
    ap.add_argument("--small-gemm", default=None, metavar="M1,M2",
                    help="only the row-block gemm table by rows, at these widths")
    ap.add_argument("--blocks", default=None, metavar="M1,M2",
                    help="only the block table, at these widths")
    a = ap.parse_args(argv)
    import numba

    print(f"numba threads: {numba.get_num_threads()}")
    if a.refresh:
        refresh_table()
        return 0
    if a.gemm_tn:
        gemm_tn_table(a.n)
        return 0
    if a.settle:
        settle_table(a.n)
        return 0
    if a.picard:
        picard_table(a.n, [int(w) for w in a.picard.split(",")])
        return 0
    if a.small_gemm:
        small_gemm_table(a.n, [int(w) for w in a.small_gemm.split(",")])
        return 0
    if a.blocks:
        blocks_table(a.n, [int(w) for w in a.blocks.split(",")])
        return 0
    blocks_table(a.n)
    picard_table(a.n)
    small_gemm_table(a.n)
    pass_table()
    gemm_tn_table(a.n)
    scaling()
    refresh_table()
    settle_table(a.n)
    return 0


if __name__ == "__main__":
    from . import quietly

    raise SystemExit(quietly.main(main))
