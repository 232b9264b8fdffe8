"""deqbench against its peers: the ratio table of issue 6 (W1-W5 and memory).

Run from the repository root, in an environment with the peers installed::

    pip install -e ".[peers]"
    python -m benchmarks.peers.run_peers            # full grid (~20-30 min on 2 cores)
    python -m benchmarks.peers.run_peers --quick    # m <= 256, fewer repetitions

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
import csv
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import deqbench_peers, jax_peers, numpy_peers, torch_peers
from . import problems as P
from .problems import PeerMissing
from .timing import interleaved

ROOT = Path(__file__).resolve().parents[2]
DB = "deqbench"


# ---- peers per workload -----------------------------------------------------------------


def forward_factories(p):
    return [
        (DB, lambda: deqbench_peers.forward(p)),
        ("numpy loop", lambda: numpy_peers.forward(p)),
        ("numpy direct", lambda: numpy_peers.direct_forward(p)),
        ("pytorch eager", lambda: torch_peers.eager_forward(p)),
        ("torchdeq", lambda: torch_peers.torchdeq_forward(p)),
        ("jaxopt", lambda: jax_peers.forward(p)),
    ]


def step_factories(p):
    return [
        (DB, lambda: deqbench_peers.step(p)),
        ("numpy loop", lambda: numpy_peers.step(p)),
        ("numpy direct", lambda: numpy_peers.direct_step(p)),
        ("pytorch eager", lambda: torch_peers.eager_step(p)),
        ("torchdeq", lambda: torch_peers.torchdeq_step(p)),
        ("jaxopt", lambda: jax_peers.step(p)),
    ]


# ---- one case: build, check, time ---------------------------------------------------------


def bench_case(workload: str, p, factories, *, grads: bool, reps: int, log) -> list[dict]:
    fns, outcomes, errs, notes, warm = {}, {}, {}, {}, {}
    for name, make in factories:
        try:
            fn = make()
        except PeerMissing as e:
            notes[name] = f"not measured: {e}"
            continue
        if fn is None:
            continue
        t = time.perf_counter()
        out = fn()  # warm-up (JIT) and the correctness check
        warm[name] = time.perf_counter() - t  # long calls need no calibration run
        errs[name] = P.check(p, out, what=name, grads=grads)
        fns[name], outcomes[name] = fn, out
    rng = np.random.default_rng(1)
    Zm, Mm, Tm = (
        rng.standard_normal((p.n, p.m)),
        rng.standard_normal((p.m, p.m)),
        np.empty((p.n, p.m)),
    )
    fns["numpy matmul"] = lambda: np.matmul(Zm, Mm, out=Tm)
    t0 = time.perf_counter()
    times = interleaved(fns, reps, known=warm)
    log(f"  {workload} {p.name}: {time.perf_counter() - t0:.1f} s for {reps} rounds")
    t_db = float(np.median(times[DB])) if DB in times else np.nan
    db = outcomes.get(DB)
    rows = []
    for name in [n for n, _ in factories] + ["numpy matmul"]:
        if name in notes:
            rows.append(dict(workload=workload, m=p.m, n=p.n, d=p.d, peer=name, note=notes[name]))
            continue
        if name not in times:
            continue
        t = times[name]
        med = float(np.median(t))
        if name == "numpy matmul":
            flops, fe, be = P.flops_map(p), "", ""
        else:
            o = outcomes[name]
            fe, be = o.fp_evals, o.adj_evals
            if name == "numpy direct":
                flops = (
                    P.flops_direct_step(p)
                    if grads
                    else ((2 / 3) * p.m**3 + 2 * p.m * p.m * p.n + 2 * p.m * p.d * p.n)
                )
            else:
                # peers that do not report a count are charged deqbench's count
                fe_ = fe if fe and fe > 0 else db.fp_evals
                be_ = be if be and be > 0 else db.adj_evals
                flops = P.flops_step(p, fe_, be_) if grads else P.flops_forward(p, fe_)
        rows.append(
            dict(
                workload=workload,
                m=p.m,
                n=p.n,
                d=p.d,
                peer=name,
                median_s=med,
                q1_s=float(np.percentile(t, 25)),
                q3_s=float(np.percentile(t, 75)),
                rounds=len(t),
                fp_evals=fe,
                adj_evals=be,
                gflops=flops / med / 1e9,
                ratio=t_db / med,
                speedup=med / t_db,
                rel_err=errs.get(name, ""),
                note="",
            )
        )
    return rows


# ---- memory -------------------------------------------------------------------------------

MEM_PEERS = [DB, "numpy loop", "pytorch eager", "torchdeq", "jaxopt"]


def memory_rows(m: int, n: int, configs, log) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    rows = []
    for rho, tol in configs:
        for peer in MEM_PEERS:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.peers.memory",
                peer,
                str(m),
                str(n),
                str(rho),
                str(tol),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode != 0 or not lines:
                tail = (r.stderr.strip().splitlines() or ["?"])[-1]
                rows.append(
                    dict(peer=peer, m=m, n=n, rho=rho, tol=tol, note=f"not measured: {tail[:120]}")
                )
                continue
            row = json.loads(lines[-1])
            row["note"] = ""
            rows.append(row)
            log(
                f"  memory {peer} rho={rho} tol={tol}: evals {row['fp_evals']}/{row['adj_evals']}, "
                f"peak extra {row['peak_extra_bytes'] / 2**20:.0f} MiB, "
                f"x{row['ratio_extra']:.2f} of must-hold"
            )
    return rows


# ---- W3 and W5 (need deqbench.train / deqbench sweep) -------------------------------------


def w3_rows(reps: int, log) -> list[dict]:
    from . import w3

    return w3.run(reps=reps, log=log)


def w5_rows(log, quick: bool) -> list[dict]:
    from . import w5

    return w5.run(log=log, quick=quick)


# ---- output ------------------------------------------------------------------------------


def fmt(x, spec):
    return (
        "" if x in ("", None) or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)
    )


def speed_table(rows) -> str:
    out = [
        "| workload | m | peer | median s | evals fwd/adj | GFLOP/s | deqbench/peer | speed-up "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "median_s" not in r:
            out.append(f"| {r['workload']} | {r['m']} | {r['peer']} | | | | | | {r['note']} |")
            continue
        ev = "" if r["fp_evals"] == "" else f"{r['fp_evals']}/{r['adj_evals']}"
        if r["workload"] == "W3":
            ev = f"{r['fp_evals']} steps"
        out.append(
            f"| {r['workload']} | {r['m']} | {r['peer']} | {fmt(r['median_s'], '.4g')} | {ev} | "
            f"{fmt(r['gflops'], '.1f')} | {fmt(r['ratio'], '.3f')} | "
            f"{fmt(r['speedup'], '.2f')}x | {r.get('note', '')} |"
        )
    return "\n".join(out)


def memory_table(rows) -> str:
    out = [
        "| peer | rho | tol | evals fwd/adj | peak extra MiB | must-hold MiB | extra ratio |"
        " total ratio (inputs incl.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("note"):
            out.append(f"| {r['peer']} | {r['rho']} | {r['tol']} | {r['note']} | | | | |")
            continue
        out.append(
            f"| {r['peer']} | {r['rho']} | {r['tol']:.0e} | {r['fp_evals']}/{r['adj_evals']} | "
            f"{r['peak_extra_bytes'] / 2**20:.0f} | {r['must_hold_extra_bytes'] / 2**20:.0f} | "
            f"{r['ratio_extra']:.2f} | {r['ratio_total']:.2f} |"
        )
    return "\n".join(out)


def _get(rows, workload, m, peer, key):
    for r in rows:
        if r["workload"] == workload and r["m"] == m and r["peer"] == peer and "median_s" in r:
            return r.get(key)
    return None


def targets(rows, mem, w3, w5) -> list[tuple[str, str, str]]:
    """(target, met/missed/not measured, evidence)."""
    res = []
    sizes = sorted({r["m"] for r in rows if r["workload"] in ("W1", "W2")})
    for w in ("W1", "W2"):
        for m in [s for s in sizes if s >= 256]:
            g = _get(rows, w, m, DB, "gflops")
            g0 = _get(rows, w, m, "numpy matmul", "gflops")
            s = _get(rows, w, m, "numpy loop", "speedup")
            if g is None or g0 is None or s is None:
                continue
            ok = g >= 0.85 * g0 and s >= 1.1
            res.append(
                (
                    f"{w} m={m}: >= 85% of matmul GFLOP/s and >= 1.1x NumPy loop",
                    "met" if ok else "missed",
                    f"{g:.1f} vs {g0:.1f} GFLOP/s ({100 * g / g0:.0f}%), {s:.2f}x NumPy loop",
                )
            )
        if 32 in sizes:
            s1 = _get(rows, w, 32, "numpy loop", "speedup")
            s2 = _get(rows, w, 32, "pytorch eager", "speedup")
            if s1 is not None:
                ok = s1 >= 3 and (s2 is None or s2 >= 3)
                res.append(
                    (
                        f"{w} m=32: >= 3x NumPy loop and PyTorch eager",
                        "met" if ok else "missed",
                        f"{s1:.2f}x NumPy, " + (f"{s2:.2f}x PyTorch" if s2 else "PyTorch n/a"),
                    )
                )
    for m in sizes:
        for peer in ("torchdeq", "jaxopt"):
            s = _get(rows, "W2", m, peer, "speedup")
            if s is None:
                res.append((f"W2 m={m}: >= 2x {peer}", "not measured", "peer missing"))
            else:
                res.append((f"W2 m={m}: >= 2x {peer}", "met" if s >= 2 else "missed", f"{s:.2f}x"))
    for m in sorted({r["m"] for r in rows if r["workload"] == "W4"}):
        s = _get(rows, "W4", m, "torchdeq", "speedup")
        if s is not None:
            res.append((f"W4 m={m}: >= 2x TorchDEQ", "met" if s >= 2 else "missed", f"{s:.2f}x"))
    res.extend(w3 or [])  # None: W3 / W5 not part of this invocation
    res.extend(w5 or [])
    dbm = [r for r in mem if r["peer"] == DB and not r.get("note")]
    if dbm:
        peaks = [r["peak_extra_bytes"] for r in dbm]
        its = [r["fp_evals"] + r["adj_evals"] for r in dbm]
        flat = max(peaks) <= 1.05 * min(peaks) + 2**20
        res.append(
            (
                "Memory: flat in iteration count",
                "met" if flat else "missed",
                f"peak extra {min(peaks) / 2**20:.0f}-{max(peaks) / 2**20:.0f} MiB over "
                f"{min(its)}-{max(its)} map evaluations",
            )
        )
        worst = max(r["ratio_extra"] for r in dbm)
        worst_t = max(r["ratio_total"] for r in dbm)
        res.append(
            (
                "Memory: <= 1.2x the arrays the step must hold",
                "met" if worst <= 1.2 else "missed",
                f"extra / must-hold extra = {worst:.2f}; with inputs {worst_t:.2f}",
            )
        )
    return res


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    info["load_avg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    import numba

    import deqbench

    info["versions"] = {
        "deqbench": deqbench.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("scipy", "torch", "torchdeq", "jax", "jaxopt"):
        try:
            info["versions"][mod] = version(mod)
        except PackageNotFoundError:
            info["versions"][mod] = "not installed"
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted(
            {
                f"{d['internal_api']} {d['version']} ({d['num_threads']} threads)"
                for d in threadpool_info()
                if d["user_api"] == "blas"
            }
        )
    except ImportError:
        info["blas"] = []
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        info["git"] = "?"
    return info


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = []
    for r in rows:
        key = (r["workload"], r["m"])
        if key not in cases and "median_s" in r:
            cases.append(key)
    peers = [
        p
        for p in ("numpy loop", "numpy direct", "pytorch eager", "torchdeq", "jaxopt")
        if any(r["peer"] == p and "median_s" in r for r in rows)
    ]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), height_ratios=[2, 1])
    width = 0.8 / max(len(peers), 1)
    x = np.arange(len(cases))
    for i, peer in enumerate(peers):
        vals = [_get(rows, w, m, peer, "speedup") or np.nan for w, m in cases]
        ax.bar(x + (i - (len(peers) - 1) / 2) * width, vals, width, label=peer)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("peer time / deqbench time\n(> 1: deqbench faster)")
    ax.set_xticks(x, [f"{w}\nm={m}" for w, m in cases])
    ax.legend(ncol=len(peers), fontsize=8, loc="upper left")
    ax.set_title("deqbench against peers (float64, tol 1e-10, medians of interleaved rounds)")
    g = [(_get(rows, w, m, DB, "gflops") or np.nan) for w, m in cases]
    g0 = [(_get(rows, w, m, "numpy matmul", "gflops") or np.nan) for w, m in cases]
    ax2.bar(x - 0.2, g, 0.4, label="deqbench")
    ax2.bar(x + 0.2, g0, 0.4, label="numpy matmul, same shapes")
    ax2.set_xticks(x, [f"{w}\nm={m}" for w, m in cases])
    ax2.set_ylabel("GFLOP/s")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(rows, path: Path) -> None:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="m in {32, 256}, 3 rounds")
    ap.add_argument(
        "--sizes", default=None, help="comma-separated m for W1/W2 (default 32,256,1024)"
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
    a = ap.parse_args(argv)
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
        p = P.tanh_problem(256, a.n)
        rows += bench_case(
            "W4", p, step_factories(p), grads=True, reps=a.reps or (3 if a.quick else 5), log=log
        )
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
    write_csv(rows, out / "peers.csv")
    if mem:
        write_csv(mem, out / "memory.csv")
    plot([r for r in rows if r["workload"] in ("W1", "W2", "W4")], out / "peers.png")
    cmd = "python -m benchmarks.peers.run_peers " + " ".join(
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
    )
    (out / "README.md").write_text(text)
    print("\n" + table + "\n\n" + (memory_table(mem) if mem else "") + "\n\n" + tgt)
    return 0


README = """# deqbench against its peers (issue 6)

Produced by `{cmd}` (from the repository root, peers installed with
`pip install -e ".[peers]"`), started {started}, {minutes:.0f} minutes.
Files: `peers.csv` (every row below plus quartiles), `memory.csv`, `peers.png`.

## Machine

{machine}

The machine is shared (other jobs were running: see the load averages), so
absolute times are noisy; every comparison is a ratio of medians of rounds
interleaved in ONE process, each peer once per round in rotated order.

## Protocol

- float64; the same seeded problem for every peer; every answer checked
  against a dense reference before timing (`rel_err` in the CSV).
- Stopping rule for forward AND adjoint solves: relative residual
  `||F(Z) - Z||_F / ||F(Z)||_F <= 1e-10` of the whole batch, after every map
  evaluation, from a zero start. TorchDEQ gets the state as one batch element
  `(1, n*m)` with `stop_mode="rel"`; jaxopt (absolute rule) gets
  `tol = 1e-10 ||Z*||_F`, and its implicit backward a Richardson (adjoint
  Picard) loop with the same relative rule.
- W1: forward Picard solve including `U = X B^T`. W2/W4: loss and exact
  implicit gradient (forward solve, loss, adjoint solve, `dL/dA`, `dL/dB`);
  the O(m^2 + md) parameter update is left out. n = {n}, d = m; W1/W2: linear
  DEQ with spectral radius rho(A) = 0.5; W4: `z = tanh(A z + B x)`, m = 256,
  `||A||_2 = 0.9`.
- GFLOP/s from THEORY.md section 8 with each peer's own evaluation counts
  (deqbench's where a peer does not report one); "numpy matmul" is
  `np.matmul((n, m), (m, m), out=)` timed in the same rounds.
- "numpy direct" (one LU of I - A, SciPy getrf/getrs) is the exact answer by a
  different algorithm, shown for reference.
- ratio = deqbench time / peer time (< 1: deqbench faster); speed-up = 1/ratio.

## Speed

{table}

## Memory (W2, m = 256, n = {mem_n}: one step, one process per peer)

Peak resident memory the step needed beyond its resident inputs
(`VmHWM - VmRSS`, high-water mark reset before the call), against the arrays
the step must hold beyond its inputs: `U = X B^T`, `Z`, `G`, `Lam` (n x m
each) and the gradients. "total ratio" adds the inputs X, Y, A, B to both.

{memory}

## Targets

{targets}
"""


if __name__ == "__main__":
    raise SystemExit(main())
