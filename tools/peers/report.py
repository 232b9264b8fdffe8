"""Reporting: tables, targets met or missed, the chart, the CSV and the README."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from benchmarks.peers.registry import DB, ITERATIVE_PEERS


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


def get(rows, workload, m, peer, key):
    for r in rows:
        if r["workload"] == workload and r["m"] == m and r["peer"] == peer and "median_s" in r:
            return r.get(key)
    return None


def targets(rows, mem, w3, w5) -> list[tuple[str, str, str]]:
    """(target, met/missed/not measured, evidence) for the targets of the performance
    issue that this table can judge: per workload and width, deqbench against the
    fastest iterative peer (>= 1x; >= 1.5x for m <= 64) and its GFLOP/s against
    the machine's best matmul of the same shapes (the faster of numpy's and
    torch's; >= 85% for m <= 64, >= 90% above), numpy's beside it."""
    res = []
    cases = []
    for r in rows:
        key = (r["workload"], r["m"])
        if r["workload"] in ("W1", "W2", "W4") and key not in cases:
            cases.append(key)
    for w, m in cases:
        peers = [(p, get(rows, w, m, p, "speedup")) for p in ITERATIVE_PEERS]
        peers = [(p, s) for p, s in peers if s is not None]
        if peers and get(rows, w, m, DB, "median_s") is not None:
            best, s = min(peers, key=lambda ps: ps[1])  # smallest speed-up = fastest peer
            need = 1.5 if m <= 64 else 1.0
            res.append((f"{w} m={m}: >= {need:g}x the fastest peer",
                        "met" if s >= need else "missed", f"{s:.2f}x {best}"))
        g = get(rows, w, m, DB, "gflops")
        g0 = get(rows, w, m, "numpy matmul", "gflops")
        gb = get(rows, w, m, "best matmul", "gflops") or g0
        if g is not None and gb:
            need = 0.85 if m <= 64 else 0.90
            which = next((r["note"] for r in rows if r["workload"] == w and r["m"] == m
                          and r["peer"] == "best matmul"), "numpy matmul")
            numpy_part = f"; numpy matmul {g0:.1f} ({100 * g / g0:.0f}%)" if g0 else ""
            res.append((f"{w} m={m}: >= {100 * need:.0f}% of the best matmul GFLOP/s",
                        "met" if g >= need * gb else "missed",
                        f"{g:.1f} vs {gb:.1f} GFLOP/s, {which} ({100 * g / gb:.0f}%)"
                        + numpy_part))
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
        vals = [get(rows, w, m, peer, "speedup") or np.nan for w, m in cases]
        ax.bar(x + (i - (len(peers) - 1) / 2) * width, vals, width, label=peer)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("peer time / deqbench time\n(> 1: deqbench faster)")
    ax.set_xticks(x, [f"{w}\nm={m}" for w, m in cases])
    ax.legend(ncol=len(peers), fontsize=8, loc="upper left")
    ax.set_title("deqbench against peers (float64, tol 1e-10, medians of interleaved rounds)")
    g = [(get(rows, w, m, DB, "gflops") or np.nan) for w, m in cases]
    g0 = [(get(rows, w, m, "numpy matmul", "gflops") or np.nan) for w, m in cases]
    gb = [(get(rows, w, m, "best matmul", "gflops") or np.nan) for w, m in cases]
    ax2.bar(x - 0.27, g, 0.27, label="deqbench")
    ax2.bar(x, g0, 0.27, label="numpy matmul, same shapes")
    ax2.bar(x + 0.27, gb, 0.27, label="best matmul (numpy or torch)")
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


README = """# deqbench against its peers

Produced by `{cmd}` (from the repository root, peers installed with
`pip install -e ".[peers]"`), started {started}, {minutes:.0f} minutes.
Files: `peers.csv` (every row below plus quartiles), `memory.csv`, `peers.png`.

## Quiet line

    {quiet}

## Machine

{machine}

Timed under the quiet check (the harness waits for a quiet machine and
measures the run as `deqbench quiet` does; its summary line, with the share
of CPU other processes took during the run, is under "Quiet line" above; a
NOISY run is not a result, and `--strict` writes none). Every comparison is a ratio of medians
of rounds interleaved in ONE process, each peer once per round in rotated
order, every timed batch after a 0.25 s pause so that the previous peer's
idle threads (OpenBLAS spins ~0.1 s after a call) have parked
(`tools/peers/timing.py`, `SETTLE_S`).

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
- GFLOP/s from docs/theory.md §8 with each peer's own evaluation counts
  (deqbench's where a peer does not report one); "numpy matmul" is
  `np.matmul((n, m), (m, m), out=)` timed in the same rounds, "torch matmul"
  `torch.matmul` of the same arrays (torch installed), and "best matmul" the
  faster of the two (named in its note): the efficiency reference.
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
