"""Newton against Picard as the forward solve of ``train("single_index", ...)`` on
the paper's A.3 problem (tanh, d = 20, n = 8000, the exact backward): the
measurement behind Newton being the default of ``single_index``.

One thread, on a quiet machine::

    deqbench quiet --strict -- python -m tools.peers.newton_vs_picard --steps 4000 --reps 3

prints the median seconds per step of each solver (interleaved runs, the order
alternated), the forward evaluations per step and the largest difference of the
final parameters.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.peers.paper_peers import a3_problem

from .timing import pin_threads, settle


def run(seed: int = 100, steps: int = 4000, reps: int = 3, lr: float = 0.4, log=print) -> dict:
    import deqbench as db

    p = a3_problem(seed)
    w, b = p.theta0[:-1], p.theta0[-1]

    def fit(solver, k=steps):
        t = time.perf_counter()
        r = db.train("single_index", p.X, p.Y, np.array([[b]]), w[None, :].copy(), lr=lr,
                     steps=k, solver=solver, tol=1e-12, activation="tanh", record_every=1)
        return time.perf_counter() - t, r

    solvers = ("newton", "picard")
    for s in solvers:
        fit(s, 2)  # compiled before timing
    secs = {s: [] for s in solvers}
    last = {}
    for rep in range(reps):
        for s in solvers if rep % 2 == 0 else solvers[::-1]:
            settle()
            t, last[s] = fit(s)
            secs[s].append(t)
    out = {}
    for s in solvers:
        r = last[s]
        if r.status != "max_steps":
            raise RuntimeError(f"{s}: the run ended with {r.status}")
        out[s] = {"us_per_step": 1e6 * float(np.median(secs[s])) / steps,
                  "fp_iters_mean": float(np.mean(r.history["fp_iters"][1:]))}
        log(f"{s:>7}: {out[s]['us_per_step']:.1f} us a step (median of {reps}), "
            f"{out[s]['fp_iters_mean']:.2f} forward evaluations a step")
    diff = float(max(np.abs(last["newton"].B - last["picard"].B).max(),
                     abs(last["newton"].A[0, 0] - last["picard"].A[0, 0])))
    out["speedup"] = out["picard"]["us_per_step"] / out["newton"]["us_per_step"]
    out["theta_difference"] = diff
    log(f"newton is {out['speedup']:.2f}x picard; final parameters differ by {diff:.2e}")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    pin_threads(1, "tools.peers.newton_vs_picard", argv)
    run(args.seed, args.steps, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
