"""deqbench against its peers: the ratio table (W1-W5 and memory). This script
only parses arguments; the peers are in ``registry``, the measuring in
``harness``, the tables, targets and chart in ``report``.

Run from the repository root, in an environment with the peers installed. The
run waits for a quiet machine and ends with the quiet check's summary line,
also written into the README it produces (``--strict``: a NOISY run writes
nothing and exits 4; ``--max-load``, ``--wait``, ``--no-quiet``: ``tools/quietly.py``)::

    pip install -e ".[peers]"
    python -m tools.peers.run_peers            # full grid (~20-30 min on 2 cores)
    python -m tools.peers.run_peers --quick    # m <= 256, fewer repetitions
    python -m tools.peers.run_peers --threads 1 --out results/peers/1thread/run1

Writes ``results/peers/peers.csv`` (one row per workload, size and peer),
``memory.csv``, ``peers.png`` (speed-up bars and GFLOP/s against matmul) and
``README.md`` (table, targets met or missed, command and machine).

Protocol: float64 everywhere; same seeded problem for every peer; the same
stopping rule (relative residual ``||F(Z) - Z||_F / ||F(Z)||_F <= 1e-10`` of
the whole batch, checked after every map evaluation, for the forward and the
adjoint solve); every answer checked against a dense reference before timing;
JIT compilation and warm-up outside the timing; repetitions interleaved (each
peer once per round, order rotated) and medians reported. ``ratio`` is
deqbench time / peer time (below 1: deqbench is faster); ``speed-up`` is its
inverse.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.peers import problems as P
from benchmarks.peers.registry import forward_factories, step_factories

from .. import quietly
from .harness import ROOT, THREAD_ENV, bench_case, machine, memory_rows, w3_rows, w5_rows
from .report import README, memory_table, plot, speed_table, targets, write_csv


def pin_threads(threads: int, argv) -> None:
    """Re-run this command with every library pinned to ``threads`` threads.

    The limits must be in the environment before NumPy, numba, PyTorch or
    JAX load their thread pools, so the process replaces itself once. The
    process is also bound to ``threads`` CPUs (inherited through ``exec``):
    XLA's CPU runtime ignores the thread flags below for its own pool, and
    jaxopt under them used 1.93 CPU seconds per wall second at m = 256 (so
    the first one-thread table compared deqbench on one core with jaxopt on
    two); bound to one CPU it used 1.00.
    """
    if os.environ.get("DEQBENCH_PEERS_THREADS") == str(threads):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
        raise SystemExit(f"run_peers: --threads {threads} exceeds the {len(cpus)} CPUs "
                         "this process may run on")
    os.sched_setaffinity(0, cpus[:threads])
    env = dict(os.environ)
    for key in THREAD_ENV[:-2]:
        env[key] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                            " intra_op_parallelism_threads=1").strip()
    env["DEQBENCH_PEERS_THREADS"] = str(threads)
    os.execve(sys.executable, [sys.executable, "-m", "tools.peers.run_peers", *argv], env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="m in {32, 256}, 3 rounds")
    ap.add_argument(
        "--sizes", default=None, help="comma-separated m for W1/W2/W4 (default 32,256,1024)"
    )
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument(
        "--reps", type=int, default=None, help="interleaved rounds (default 5; 3 for m=1024)"
    )
    ap.add_argument(
        "--only", default="W1,W2,W4,MEM,W3,W5", help="comma-separated subset of W1,W2,W3,W4,W5,MEM"
    )
    ap.add_argument("--mem-n", type=int, default=4096, help="n of the memory runs (m = 256)")
    ap.add_argument("--out", default=str(ROOT / "results" / "peers"))
    ap.add_argument(
        "--threads", type=int, default=None,
        help="pin numba, BLAS, OpenMP, PyTorch and XLA to this many threads (default: all)",
    )
    a = ap.parse_args(argv)
    if a.threads is not None:  # the whole command line again, quiet options included
        pin_threads(a.threads, sys.argv[1:])
    only = set(a.only.split(","))
    sizes = (
        [int(s) for s in a.sizes.split(",")]
        if a.sizes
        else ([32, 256] if a.quick else [32, 256, 1024])
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    started = datetime.now(timezone.utc)
    info = machine()
    log(f"machine: {info}")
    rows = []
    for m in sizes:
        reps = a.reps or (3 if (m >= 1024 or a.quick) else 5)
        if {"W1", "W2"} & only:
            p = P.linear_problem(m, a.n, name=f"linear m={m}")
            if "W1" in only:
                rows += bench_case("W1", p, forward_factories(p), grads=False, reps=reps, log=log)
            if "W2" in only:
                rows += bench_case("W2", p, step_factories(p), grads=True, reps=reps, log=log)
        if "W4" in only:
            p = P.tanh_problem(m, a.n)
            rows += bench_case("W4", p, step_factories(p), grads=True, reps=reps, log=log)
    mem = []
    if "MEM" in only:
        cfg = [(0.5, 1e-4), (0.5, 1e-10), (0.9, 1e-10)]
        mem = memory_rows(256, a.mem_n, cfg, log)
    w3 = w3_rows(a.reps or 3, log) if "W3" in only else []
    w5 = w5_rows(log, a.quick) if "W5" in only else []
    w3_rows_, w3_targets = w3 if w3 else ([], None)
    w5_rows_, w5_targets = w5 if w5 else ([], None)
    rows += w3_rows_ + w5_rows_
    tg = targets(rows, mem, w3_targets, w5_targets)
    quiet = quietly.line_so_far()
    if quietly.refusing():
        print(f"{quiet}\nNOISY run (--strict): nothing written to {out}")
        return quietly.NOISY_STRICT
    write_csv(rows, out / "peers.csv")
    if mem:
        write_csv(mem, out / "memory.csv")
    timed = [r for r in rows if r["workload"] in ("W1", "W2", "W4")]
    if timed:  # (--only W3,W5 has no ratio bars to draw)
        plot(timed, out / "peers.png")
    cmd = "python -m tools.peers.run_peers " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    info["load_avg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = speed_table(rows)
    tgt = "\n".join(
        ["| target | status | measured |", "|---|---|---|"]
        + [f"| {t} | {s} | {e} |" for t, s, e in tg]
    )
    text = README.format(
        cmd=cmd.strip(),
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        minutes=(datetime.now(timezone.utc) - started).total_seconds() / 60,
        machine="\n".join(f"- {k}: {v}" for k, v in info.items()),
        table=table,
        memory=memory_table(mem) if mem else "(not run)",
        targets=tgt,
        n=a.n,
        mem_n=a.mem_n,
        quiet=quiet,
    )
    (out / "README.md").write_text(text)
    print("\n" + table + "\n\n" + (memory_table(mem) if mem else "") + "\n\n" + tgt)
    return 0


if __name__ == "__main__":
    raise SystemExit(quietly.main(main))
