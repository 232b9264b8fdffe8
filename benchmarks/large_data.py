"""Reproduce the large-data targets of issue 11 outside asv.

    python -m benchmarks.large_data                       # n = 4e6, d = 512, m = 64: 16 GB
    python -m benchmarks.large_data --n 200000 --dir /data/deq   # smaller / elsewhere
    /usr/bin/time -v python -m benchmarks.large_data ...  # peak resident memory

Writes (or reuses) a seeded linear teacher in ``--dir`` with
:func:`deqbench.data.write_teacher`, then prints, in one process:

1. the raw read bandwidth of ``X.npy`` (blocks of 64 MiB, ``readinto``);
2. tanh ``loss_and_grad`` on the file (``chunk="auto"``): samples/s, against
   the same call on an in-memory slice of ``min(n, 2e5)`` rows (target: >=
   80%), and the peak resident memory it added (target: < 2 GiB);
3. the one-pass sufficient statistics of the linear model (``X^T X / n``,
   ``Y^T X / n``): throughput against the read bandwidth of step 1;
4. linear ``train`` with sufficient statistics on row prefixes ``n/16, n/4, n``
   of the file: time per step and its fitted exponent in ``n`` (target < 0.05).

Time on a quiet machine (``../shared/tools/quiet``) and quote its line; a
second run reads from the page cache unless it is dropped first.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import deqbench as db
from deqbench import _source
from deqbench._chunked import sufficient_stats

from .common import peak_rss_increase_mib


def write(root, n: int, d: int, m: int) -> Path:
    """A linear teacher (``noise = 0.1``, seed 0) of ``n`` rows in ``root`` (a fresh
    temporary directory if None), reused when ``root`` already holds it."""
    root = Path(tempfile.mkdtemp(prefix="deqbench-large-")) if root is None else Path(root)
    meta = root / db.data.TEACHER_JSON
    want = dict(kind="linear", n=n, d=d, m=m, noise=0.1, seed=0)
    if meta.is_file() and all(json.loads(meta.read_text()).get(k) == v for k, v in want.items()):
        return root
    db.data.write_teacher(root, "linear", n, d, m, noise=0.1, seed=0, overwrite=True)
    return root


def samples_per_second(fn, n: int) -> float:
    """``n`` over the wall time of one call of ``fn`` (disk reads included)."""
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def read_bandwidth(path: Path) -> float:
    """Bytes/s of reading ``path`` start to end in 64 MiB ``readinto`` calls."""
    buf = bytearray(64 << 20)
    total = 0
    t = time.perf_counter()
    with open(path, "rb") as f:
        while got := f.readinto(buf):
            total += got
    return total / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.large_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None,
                    help="data directory, kept for the next run (default: a temporary one, "
                    "deleted at the end)")
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args(argv)
    root = write(args.dir, args.n, args.d, args.m)
    try:
        return _measure(root, args)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def _measure(root: Path, args) -> int:
    n, d, m = args.n, args.d, args.m
    print(f"data: {root} (n={n}, d={d}, m={m}, {(n * (d + m) * 8) / 2**30:.2f} GiB)")
    bw = read_bandwidth(root / "X.npy")
    print(f"read bandwidth of X.npy: {bw / 2**30:.2f} GiB/s")

    A, B = db.data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=1)
    X, Y, _, _ = db.data.read_teacher(root)
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
    chunk = _source.auto_chunk(n, d + m)
    t = time.perf_counter()
    sufficient_stats(xs, ys, chunk)
    dt = time.perf_counter() - t
    print(f"sufficient statistics pass: {n * (d + m) * 8 / dt / 2**30:.2f} GiB/s "
          f"({n * (d + m) * 8 / dt / bw:.2f} x the read bandwidth of X.npy)")

    sizes, per_step = [], []
    for rows in sorted({max(n // 16, 1), max(n // 4, 1), n}):
        kw = dict(lr=0.01, sufficient_stats=True, record_every=None)
        t = time.perf_counter()
        db.train("linear", X[:rows], Y[:rows], A, B, steps=1, **kw)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        db.train("linear", X[:rows], Y[:rows], A, B, steps=args.steps + 1, **kw)
        step = (time.perf_counter() - t - t1) / args.steps
        sizes.append(rows)
        per_step.append(step)
        print(f"train linear, n={rows}: pass + 1 step {t1:.3g} s, {step * 1e6:.4g} us/step")
    if len(sizes) > 1:
        slope, _ = db.theory.loglog_fit(sizes, per_step)
        print(f"step time exponent in n: {slope:.3f} (target < 0.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
