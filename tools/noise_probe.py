"""How steady is this machine? The same kernel timed over a minute, and in fresh processes.

    deqbench quiet --strict -- python -m tools.noise_probe

Times one fixed computation (a Picard solve, tanh, m = 32, n = 2048, one
thread: the size of the gate's small cases) back to back in one process for
``--seconds``, then in ``--processes`` fresh processes of a few seconds each,
with :data:`benchmarks.common.TIMER` (CPU time, as the asv suite). It prints
the spread of the medians of consecutive windows of one process (drift in
time) and of the per-process medians (drift between processes), each as
max/min. Nothing changes between samples, so on a steady machine both are
close to 1.00; whatever they show is the floor under any A/B comparison of
times taken minutes apart, which is what ``tools/gate.sh`` has to live
with (see ``tools/gate_confirm.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.common import TIMER

_ONE_THREAD = dict(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1")


def samples(seconds: float, calls: int = 5) -> list[float]:
    """CPU seconds per call of the fixed solve, one sample per ``calls`` calls,
    for ``seconds`` of CPU time, after three warm-up calls."""
    import deqbench as db  # noqa: PLC0415

    rng = np.random.default_rng(0)
    n, d, m = 2048, 32, 32
    X = rng.standard_normal((n, d))
    A = rng.standard_normal((m, m))
    A *= 0.9 / np.linalg.norm(A, 2)
    B = rng.standard_normal((m, d)) / np.sqrt(d)

    def solve():
        return db.fixed_point(X, A, B, activation="tanh", method="picard", tol=1e-10)

    for _ in range(3):
        solve()
    out: list[float] = []
    end = TIMER() + seconds
    while TIMER() < end:
        t0 = TIMER()
        for _ in range(calls):
            solve()
        out.append((TIMER() - t0) / calls)
    return out


def spread(values) -> float:
    """max / min of ``values``."""
    return float(np.max(values) / np.min(values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.noise_probe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="the long process (%(default)s s)")
    p.add_argument("--window", type=int, default=20, help="samples per window (%(default)s)")
    p.add_argument("--processes", type=int, default=12, help="short processes (%(default)s)")
    p.add_argument("--short-seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:  # one short process: print its samples
        print(json.dumps(samples(args.child)))
        return 0
    if args.seconds <= 0 or args.window < 1 or args.processes < 2:
        p.error("--seconds must be > 0, --window >= 1 and --processes >= 2")
    env = {**os.environ, **_ONE_THREAD}

    def child(seconds):
        out = subprocess.run([sys.executable, "-m", "tools.noise_probe", "--child",
                              str(seconds)], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    long = np.array(child(args.seconds)) * 1e3
    w = args.window
    windows = [np.median(long[i:i + w]) for i in range(0, len(long) - w + 1, w)]
    per_process = [np.median(child(args.short_seconds)) * 1e3 for _ in range(args.processes)]
    print(f"one process, {len(long)} samples over {args.seconds:.0f} s: median "
          f"{np.median(long):.2f} ms; medians of {len(windows)} windows of {w}: "
          f"{min(windows):.2f}-{max(windows):.2f} ms (spread {spread(windows):.2f})")
    print(f"{args.processes} fresh processes: medians {min(per_process):.2f}-"
          f"{max(per_process):.2f} ms (spread {spread(per_process):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
