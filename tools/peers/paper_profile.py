"""Where a gradient-descent step of the paper's A.3 workload goes, against the
cost of reading ``X`` once: the limit of the speed-up over the authors' algorithm.

One thread, on a quiet machine::

    deqbench quiet --strict -- python -m tools.peers.paper_profile --threads 1

prints, in microseconds per call (the best of ``--reps`` batches of about
0.2 s), for seed 100 at the start and at the end of its 40,000 steps:

- ``read X``: ``X.sum()``, the memory traffic every step pays at least once;
- ``two gemv``: ``X @ w`` and ``X.T @ e`` through NumPy's BLAS (an unfused step
  reads ``X`` twice);
- ``pass, identity``: deqbench's fused pass (``s0``, one evaluation, the
  gradient) with ``sigma`` the identity: the pass without the nonlinear solve;
- ``pass, tanh``: the same pass with the paper's tanh, warm-started from the last
  step's solution (what one step of the run costs);
- ``sigma`` per sample: ``tanh`` and its slope over ``n`` values, times the
  evaluations per sample the run takes;
- the whole run per step (the fused loop, records included) and the authors'
  algorithm per step (NumPy, same machine).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.peers.paper_peers import a3_problem, deqbench_run, numpy_a3

from .timing import pin_threads, settle


def _best(fn, reps: int, batch_s: float = 0.2) -> float:
    """Seconds per call of ``fn``: the best of ``reps`` batches of about ``batch_s``."""
    fn()
    t = time.perf_counter()
    fn()
    calls = max(1, int(batch_s / max(time.perf_counter() - t, 1e-7)))
    best = np.inf
    for _ in range(reps):
        settle(0.05)
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def profile(seed: int = 100, steps: int = 40000, reps: int = 5, log=print) -> dict:
    from deqbench import _scalar
    from deqbench._jit import jit
    from deqbench._kernels import scalar as k

    p = a3_problem(seed)
    X, Y = p.X, p.Y
    n, d = X.shape
    deqbench_run(p, "exact", 2, threads=1)  # compiled before timing
    run = deqbench_run(p, "exact", steps, threads=1)
    ref = numpy_a3(p, "exact", min(steps, 4000))
    out = {"n": n, "d": d, "run_us_per_step": 1e6 * run.seconds / steps,
           "numpy_us_per_step": 1e6 * ref.seconds / min(steps, 4000)}

    tanh = k.TANH  # a constant, as in the kernels' passes (a variable code would not vectorise)

    @jit(cache=False)  # the kernels' compiler options
    def sigma_loop(s, out):  # one evaluation of sigma and sigma' per sample
        for i in range(s.shape[0]):
            v, dv = k.value_and_slope(tanh, 0.0, s[i])
            out[i] = v + dv

    e = np.empty(n)
    scratch = np.empty(n)
    h = _scalar.train_scalar(X, Y, p.theta0[:-1], p.theta0[-1], lr=0.4, steps=steps,
                             activation="tanh", tol=1e-12, record_every=1, threads=1).history
    out["evals_per_sample_run"] = float(np.mean(h["newton_mean"]))
    out["evals_per_sample_run_max"] = float(np.max(h["newton_max"]))
    out["read_X_us"] = 1e6 * _best(lambda: X.sum(), reps)
    out["two_gemv_us"] = 1e6 * _best(lambda: (np.dot(X, p.theta0[:-1], out=e), X.T @ e), reps)
    for label, theta in (("start", p.theta0), ("end", run.theta[-1])):
        w, b = np.ascontiguousarray(theta[:-1]), float(theta[-1])
        for act in ("identity", "tanh"):
            link = _scalar._link(act)
            P = k.pack(X, Y)
            opts = _scalar._opts(tol=1e-12, max_iter=100, dtype=X.dtype, threads=1)
            g = np.empty(d + 1)
            st, _, itmax, itmean, _ = k.evaluate(link, P, w, b, np.int64(1), opts, g)
            if st != k.CONVERGED:
                raise RuntimeError(f"the {act} pass at the {label} did not converge")
            def one_pass(link=link, P=P, w=w, b=b, opts=opts, g=g):  # warm, as in a run
                return k.evaluate(link, P, w, b, np.int64(1), opts, g)

            out[f"pass_{act}_{label}_us"] = 1e6 * _best(one_pass, reps)
            out[f"evals_{act}_{label}"] = float(one_pass()[3])
        s = X @ w
        out[f"sigma_{label}_us"] = 1e6 * _best(lambda s=s: sigma_loop(s, scratch), reps)
    for key, val in out.items():
        log(f"{key:>26}: {val:.4g}" if isinstance(val, float) else f"{key:>26}: {val}")
    floor = out["read_X_us"] + out["evals_per_sample_run"] * out["sigma_end_us"]
    log(f"limit (read X once + the run's mean sigma evaluations per sample): {floor:.1f} us a "
        f"step; the run: {out['run_us_per_step']:.1f} us a step "
        f"({out['run_us_per_step'] / floor:.2f}x the limit); the authors' step: "
        f"{out['numpy_us_per_step']:.1f} us, "
        f"{out['numpy_us_per_step'] / out['read_X_us']:.1f} reads of X; the largest speed-up "
        f"this limit allows: {out['numpy_us_per_step'] / floor:.1f}x (measured: "
        f"{out['numpy_us_per_step'] / out['run_us_per_step']:.1f}x)")
    out["limit_us"] = floor
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--steps", type=int, default=40000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.threads != 1:
        raise SystemExit("paper_profile: the profile is of one thread (--threads 1)")
    pin_threads(1, "tools.peers.paper_profile", argv)
    profile(args.seed, args.steps, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
