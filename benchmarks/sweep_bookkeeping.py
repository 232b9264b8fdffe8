"""The sweep's bookkeeping at scale: main-process CPU time per run, and peak memory.

    ../shared/tools/quiet --strict -- python -m benchmarks.sweep_bookkeeping --runs 100000

Runs a grid of ``--runs`` runs of :func:`noop` (no work; two metrics and a
21-row history, the record of a short training run) through the local pool
and prints one line: the runs stored, the wall time, the main process's CPU
time per run (user + system: planning, receiving, storing, progress; the
workers' time is not in it) and its peak resident memory. Issue 12's
targets, on a quiet machine: below 0.3 ms per run and 500 MB at 10^5 runs.
Peak memory is ``ru_maxrss`` (Linux: KiB).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

HISTORY_ROWS = 21


def noop(params, seed):
    """A run that does nothing but return a record of the usual size."""
    k = params["a"]
    return {
        "status": "ok",
        "metrics": {"final_loss": 1.0 / (k + 1), "iterations": k % 7},
        "history": {"step": list(range(HISTORY_ROWS)),
                    "loss": [1.0 / (i + 1) for i in range(HISTORY_ROWS)]},
    }


def grid_text(runs: int) -> str:
    return ('[sweep]\nname = "bookkeeping"\nrun = "benchmarks.sweep_bookkeeping:noop"\n'
            f"[grid]\na = [{', '.join(map(str, range(runs)))}]\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_bookkeeping",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000, help="runs in the grid (%(default)s)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--workers", type=int, default=2, help="local pool (%(default)s)")
    p.add_argument("--out", default=None, help="sweep directory (default: a temporary one)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        p.error("--runs and --workers must be >= 1")
    from deqbench.sweep import parse_grid, run_sweep

    grid = parse_grid(grid_text(args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "sweep"
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        res = run_sweep(grid, out, executor="local", workers=args.workers, progress=False,
                        format=args.format)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{res.ok} of {args.runs} runs ok ({args.format}, {args.workers} workers): wall "
          f"{wall:.2f} s, main process {1e3 * cpu / args.runs:.3f} ms CPU per run, peak RSS "
          f"{after.ru_maxrss / 1024:.0f} MiB")
    return 0 if res.ok == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
