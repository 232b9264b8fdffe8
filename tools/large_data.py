"""Reproduce the targets of issue 11 outside asv: one command per target.

    python -m tools.large_data                   # file: n = 4e6, d = 512, m = 64 (16 GB)
    python -m tools.large_data --target peakmem  # peak memory flat in n (1e4 .. 1e6)
    python -m tools.large_data --target dtype    # float32 vs float64, m = 256 and 1024
    python -m tools.large_data --target wide     # m = d = n = 4096 vs numpy's matmul

Options: ``--n``, ``--d``, ``--m``, ``--steps``, ``--dir`` (target ``file``:
``--n 200000 --dir /data/deq`` for a smaller case elsewhere); ``--sizes``
(comma-separated: the ``n`` of ``peakmem``, the ``m`` of ``dtype``, the
``m = d = n`` of ``wide``) and ``--chunk`` (``peakmem``); ``--repeat`` (best of,
``dtype`` and ``wide``). ``/usr/bin/time -v`` in front of the ``file`` command
gives the process's peak resident memory too. Each figure is one printed line.

``--target file`` writes (or reuses) a seeded linear teacher in ``--dir`` with
:func:`deqbench.data.write_teacher`, then prints, in one process:

1. the raw read bandwidth of ``X.npy`` (blocks of 64 MiB, ``readinto``);
2. tanh ``loss_and_grad`` on the file (``chunk="auto"``): samples/s, against
   the same call on an in-memory slice of ``min(n, 2e5)`` rows (target: >=
   80%), and the peak resident memory it added (target: < 2 GiB);
3. the one-pass sufficient statistics of the linear model (``X^T X / n``,
   ``Y^T X / n``): throughput against the read bandwidth of step 1;
4. linear ``train`` with sufficient statistics on row prefixes ``n/16, n/4, n``
   of the file: the pass, then the time per step (timed apart from the pass
   in the same call) and its fitted exponent in ``n`` (target < 0.05).

``--target peakmem``: peak resident memory added by tanh ``loss_and_grad`` on
``X.npy``, ``Y.npy`` files of ``n`` rows (``d = m = 16``), in blocks of
``--chunk`` rows (4096) and in one block, for each ``n`` of ``--sizes``
(10^4, 10^5, 10^6); then the fitted exponent in ``n`` of each (target: below
0.05 chunked; the one-block path grows linearly).

``--target dtype``: W1 (forward Picard solve) and W2 (linear ``loss_and_grad``)
of :class:`benchmarks.bench_dtype.Dtype` (``n = 2048``, ``tol = 1e-5``) at each
``m`` of ``--sizes`` (256, 1024) in float64 and float32: samples/s, the ratio
(target >= 1.7) and the float32 gradient's relative error from a float64
``tol = 1e-10`` solve (target <= 1e-4).

``--target wide``: float64 forward solve (linear, ``||A||_2 = 0.5``,
``tol = 1e-10``) at ``m = d = n`` (4096), GFLOP/s counted as ``2 n m d`` for
``U = X B^T`` plus ``2 n m^2`` per map evaluation, against numpy's matmul of
the same shapes in the same run (target: >= 90%).

Time on a quiet machine (``deqbench quiet``) and quote its line; a
second ``file`` run reads from the page cache unless it is dropped first.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import deqbench as db
from benchmarks.common import peak_rss_increase_mib, samples_per_second
from benchmarks.common import write_teacher_once as write
from deqbench import _source
from deqbench._chunked import stats_row_bytes, sufficient_stats


def read_bandwidth(path: Path) -> float:
    """Bytes/s of reading ``path`` start to end in 64 MiB ``readinto`` calls."""
    buf = bytearray(64 << 20)
    total = 0
    t = time.perf_counter()
    with open(path, "rb") as f:
        while got := f.readinto(buf):
            total += got
    return total / (time.perf_counter() - t)


DEFAULT_SIZES = {"peakmem": "10000,100000,1000000", "dtype": "256,1024", "wide": "4096"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.large_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["file", "peakmem", "dtype", "wide"], default="file")
    ap.add_argument("--dir", default=None,
                    help="data directory, kept for the next run (default: a temporary one, "
                    "deleted at the end)")
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--sizes", default=None,
                    help="comma-separated sizes: n (peakmem), m (dtype), m = d = n (wide)")
    ap.add_argument("--chunk", type=int, default=4096, help="rows per block (peakmem)")
    ap.add_argument("--repeat", type=int, default=3, help="best of (dtype, wide)")
    args = ap.parse_args(argv)
    if args.target != "file":
        sizes = [int(x) for x in (args.sizes or DEFAULT_SIZES[args.target]).split(",")]
        return {"peakmem": peakmem, "dtype": dtype, "wide": wide}[args.target](sizes, args)
    root = write(args.dir, args.n, args.d, args.m)
    try:
        return _measure(root, args)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def best_wall(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call)."""
    fn()
    times = []
    for _ in range(max(repeat, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peakmem(sizes, args) -> int:
    """Peak RSS added by file ``loss_and_grad`` at ``chunk`` rows and in one block."""
    d = m = 16
    A, B = db.data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=1)
    peaks: dict[str, list[float]] = {"chunked": [], "one block": []}
    for n in sizes:
        root = write(None, n, d, m)
        try:
            def call(chunk, root=root):
                return db.loss_and_grad("nonlinear", root / "X.npy", root / "Y.npy", A, B,
                                        activation="tanh", chunk=chunk)

            chunk = min(args.chunk, n)
            call(chunk)  # compile and warm the page cache before any measurement
            peaks["chunked"].append(peak_rss_increase_mib(functools.partial(call, chunk)))
            peaks["one block"].append(peak_rss_increase_mib(functools.partial(call, n)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"peakmem loss_and_grad tanh, n={n}, d=m={d}: chunk={chunk} "
              f"{peaks['chunked'][-1]:.1f} MiB, one block {peaks['one block'][-1]:.1f} MiB")
    for kind, values in peaks.items():
        # a peak below the 4 KiB page is read as one page (the fit needs positive values)
        slope, _ = db.theory.loglog_fit(sizes, np.maximum(values, 4 / 1024))
        target = "target < 0.05" if kind == "chunked" else "linear: about 1"
        print(f"peakmem exponent in n, {kind}: {slope:.3f} ({target})")
    return 0


def dtype(sizes, args) -> int:
    """W1/W2 throughput in float32 against float64, and the float32 gradient error."""
    from benchmarks.bench_dtype import DTOL, Dtype, N
    from benchmarks.common import rel_err

    for m in sizes:
        rates, benches = {}, {}
        for dt in ("float64", "float32"):
            b = Dtype()
            b.setup(dt, m)  # checks the float32 gradient against float64 (1e-4)
            benches[dt] = b
            rates[dt] = (N / best_wall(functools.partial(b.time_w1, dt, m), args.repeat),
                         N / best_wall(functools.partial(b.time_w2, dt, m), args.repeat))
        f64, f32 = benches["float64"], benches["float32"]
        ref = db.loss_and_grad("linear", f64.X, f64.Y, f64.A, f64.B, tol=1e-10)
        err = max(rel_err(f32.lg.grad_A, ref.grad_A), rel_err(f32.lg.grad_B, ref.grad_B))
        for i, w in enumerate(("W1 fixed_point", "W2 loss_and_grad")):
            r64, r32 = rates["float64"][i], rates["float32"][i]
            print(f"{w} m={m}, n={N}, tol={DTOL:g}: float64 {r64:.4g} samples/s, float32 "
                  f"{r32:.4g} samples/s, ratio {r32 / r64:.2f} (target >= 1.7); map "
                  f"evaluations {f64.fp.n_iter + 1} / {f32.fp.n_iter + 1}")
        print(f"float32 gradient m={m}: relative error {err:.2e} from float64 "
              "(target <= 1e-4)")
    return 0


def wide(sizes, args) -> int:
    """Forward solve GFLOP/s at m = d = n against numpy's matmul of the same shapes."""
    from benchmarks.common import forward_problem

    for size in sizes:
        p = forward_problem(size, size, rho=0.5)
        n, m, d = p.n, p.m, p.d
        r = db.fixed_point(p.X, p.A, p.B, tol=1e-10)
        if not r.converged:
            raise RuntimeError(f"forward solve at m = {m} did not converge: {r.status}")
        evals = r.n_iter + 1
        flops = 2.0 * n * m * d + evals * 2.0 * n * m * m
        t = best_wall(functools.partial(db.fixed_point, p.X, p.A, p.B, tol=1e-10), args.repeat)
        out = np.empty((n, m))
        t_mm = best_wall(functools.partial(np.matmul, r.z, p.A.T, out=out), args.repeat)
        solve, mm = flops / t / 1e9, 2.0 * n * m * m / t_mm / 1e9
        print(f"wide forward solve m=d=n={size} float64: {solve:.4g} GFLOP/s ({evals} map "
              f"evaluations, {t:.3g} s); numpy matmul ({n}x{m})@({m}x{m}) {mm:.4g} GFLOP/s; "
              f"ratio {solve / mm:.3f} (target >= 0.9)")
    return 0


@contextlib.contextmanager
def timed_prepare():
    """Time the set-up of every :func:`deqbench.train` call made inside (the
    streaming pass of the sufficient statistics, in ``_training.prepare``);
    yields the list of those times. Steps are then timed apart from the pass in
    the same call: two calls, with and without steps, would leave the step
    time as the difference of two passes, which vary by more than 1000 steps
    take (seen: a negative time per step at n = 4e6)."""
    from deqbench import _training  # noqa: PLC0415

    spent: list[float] = []
    prepare = _training.prepare

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return prepare(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    _training.prepare = timed
    try:
        yield spent
    finally:
        _training.prepare = prepare


def _measure(root: Path, args) -> int:
    n, d, m = args.n, args.d, args.m
    print(f"data: {root} (n={n}, d={d}, m={m}, {(n * (d + m) * 8) / 2**30:.2f} GiB)")
    bw = read_bandwidth(root / "X.npy")
    print(f"read bandwidth of X.npy: {bw / 2**30:.2f} GiB/s")

    A, B = db.data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=1)
    X, Y, _, _ = db.data.read_teacher(root, verify=False)  # written by write() above
    k = min(n, 200_000)

    def file_call():
        return db.loss_and_grad("nonlinear", root / "X.npy", root / "Y.npy", A, B,
                                activation="tanh", chunk="auto")

    def memory_call(Xs, Ys):
        return db.loss_and_grad("nonlinear", Xs, Ys, A, B, activation="tanh", chunk="auto")

    memory_call(np.array(X[:1000]), np.array(Y[:1000]))  # compile, before any measurement
    peak = peak_rss_increase_mib(file_call)  # first, so the slice below is not in the peak
    file_rate = samples_per_second(file_call, n)
    Xs, Ys = np.array(X[:k]), np.array(Y[:k])
    mem_rate = samples_per_second(functools.partial(memory_call, Xs, Ys), k)
    del Xs, Ys
    print(f"loss_and_grad tanh: file {file_rate:.4g} samples/s, in-memory slice ({k} rows) "
          f"{mem_rate:.4g} samples/s, ratio {file_rate / mem_rate:.3f} (target >= 0.8); "
          f"peak RSS added {peak:.0f} MiB (target < 2048)")

    xs, ys = _source.open_source("X", root / "X.npy"), _source.open_source("Y", root / "Y.npy")
    chunk = _source.auto_chunk(n, stats_row_bytes(d, m, np.float64))
    t = time.perf_counter()
    sufficient_stats(xs, ys, chunk)
    dt = time.perf_counter() - t
    print(f"sufficient statistics pass: {n * (d + m) * 8 / dt / 2**30:.2f} GiB/s "
          f"({n * (d + m) * 8 / dt / bw:.2f} x the read bandwidth of X.npy)")

    sizes, per_step = [], []
    for rows in sorted({max(n // 16, 1), max(n // 4, 1), n}):
        kw = dict(lr=0.01, sufficient_stats=True, record_every=None)
        with timed_prepare() as spent:
            t = time.perf_counter()
            db.train("linear", X[:rows], Y[:rows], A, B, steps=args.steps, **kw)
            total = time.perf_counter() - t
        step = (total - spent[0]) / args.steps
        sizes.append(rows)
        per_step.append(step)
        print(f"train linear, n={rows}: pass {spent[0]:.3g} s, then {args.steps} steps at "
              f"{step * 1e6:.4g} us/step")
    if len(sizes) > 1:
        slope, _ = db.theory.loglog_fit(sizes, per_step)
        print(f"step time exponent in n: {slope:.3f} (target < 0.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
