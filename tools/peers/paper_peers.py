"""Time the paper's own algorithm against deqbench on Appendix A.3 / A.4
(the peers and the protocol are in ``benchmarks/peers/paper_peers.py``).

One thread, on a quiet machine::

    deqbench quiet --strict -- python -m tools.peers.paper_peers a3 --seeds 100 \
        --steps 40000 --reps 3 --threads 1

prints, per seed, the seconds of each side (median of interleaved runs, the
order alternated), the speed-up and the largest difference of the recorded
parameters. Not a workload of ``run_peers``' table yet (that harness times
W1-W5 on its ``Problem`` type).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.peers.paper_peers import (
    A3_SEEDS,
    A4_SEEDS,
    METHODS,
    a3_problem,
    a4_problem,
    deqbench_run,
    difference,
    numpy_a3,
    numpy_a4,
)

from .timing import pin_threads, settle


def run(part: str = "a3", seeds=None, steps: int | None = None, reps: int = 1,
        method: str = "exact", eps: float = 0.25, n: int | None = None, threads: int = 1,
        log=print) -> list[dict]:
    """Time the peer and deqbench on ``part`` (``a3`` or ``a4``) per seed, rounds
    interleaved (peer first in even rounds); returns one row per seed."""
    rows = []
    for seed in seeds or (A3_SEEDS[:1] if part == "a3" else A4_SEEDS[:1]):
        if part == "a3":
            p = a3_problem(seed, **({} if n is None else dict(n=n)))
            k = steps or 40000

            def peer(p=p, k=k):
                return numpy_a3(p, method, k)

            def ours(p=p, k=k):
                return deqbench_run(p, method, k, threads=threads)
        else:
            p = a4_problem(seed, eps, **({} if n is None else dict(n_train=n)))
            k = steps or 60000

            def peer(p=p, k=k):
                return numpy_a4(p, k)

            def ours(p=p, k=k):
                return deqbench_run(p, "exact", k, eta=0.05, every=100, threads=threads)

        deqbench_run(p, "exact" if part == "a4" else method, 2,
                     eta=0.2 if part == "a3" else 0.05, threads=threads)  # compile
        times = {"numpy": [], "deqbench": []}
        ref = got = None
        for r in range(reps):
            order = [("numpy", peer), ("deqbench", ours)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                settle()
                out = fn()
                times[name].append(out.seconds)
                if name == "numpy":
                    ref = out
                else:
                    got = out
        row = dict(part=part, seed=seed, steps=k, method=method,
                   numpy_s=float(np.median(times["numpy"])),
                   deqbench_s=float(np.median(times["deqbench"])),
                   max_theta_difference=difference(ref, got),
                   final_param_error=float(got.param_error[-1]))
        row["speedup"] = row["numpy_s"] / row["deqbench_s"]
        log(f"{part} seed {seed} ({k} steps, {method}): numpy {row['numpy_s']:.3f} s, deqbench "
            f"{row['deqbench_s']:.3f} s, speed-up {row['speedup']:.1f}x, max |theta diff| "
            f"{row['max_theta_difference']:.2e}, final parameter error "
            f"{row['final_param_error']:.3e}")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["a3", "a4"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None, help="default: the paper's")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--method", choices=sorted(METHODS), default="exact")
    ap.add_argument("--eps", type=float, default=0.25, help="A.4's epsilon")
    ap.add_argument("--n", type=int, default=None, help="training samples (default: the paper's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    pin_threads(args.threads, "tools.peers.paper_peers", argv)
    run(args.part, args.seeds, args.steps, args.reps, args.method, args.eps, args.n,
        args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
