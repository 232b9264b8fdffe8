"""The README's performance table from the committed peer results.

``python -m benchmarks.peers.summary [--results results/peers]`` reads
``peers.csv`` of the all-threads runs (``m16-256``, ``m1024``) and the
one-thread runs (``1thread``, ``1thread-m1024``) and prints one Markdown row
per workload and width: deqbench's speed-up over the fastest iterative peer
(named) and its GFLOP/s against numpy's matmul of the same shapes, measured in
the same rounds. A width missing from the results prints ``-``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ITERATIVE = ("numpy loop", "pytorch eager", "torchdeq", "jaxopt")
ALL_THREADS = ("m16-256", "m1024")
ONE_THREAD = ("1thread", "1thread-m1024")
WORKLOADS = ("W1", "W2", "W4")
WIDTHS = (16, 32, 64, 256, 1024)
HEADER = ("| workload | m | all threads: speed-up vs fastest peer | GFLOP/s vs matmul "
          "| one thread: speed-up | GFLOP/s vs matmul |\n|---|---|---|---|---|---|")


def load(results: Path, runs) -> dict:
    """``{(workload, m): {peer: row}}`` over the runs' ``peers.csv`` (later runs win)."""
    rows: dict = {}
    for run in runs:
        path = results / run / "peers.csv"
        if not path.exists():
            continue
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                rows.setdefault((r["workload"], int(r["m"])), {})[r["peer"]] = r
    return rows


def cells(rows: dict, key) -> tuple[str, str]:
    """``("1.23x jaxopt", "47.6 / 42.4 (112%)")`` for one workload and width."""
    group = rows.get(key)
    if not group or "deqbench" not in group:
        return "-", "-"
    t = float(group["deqbench"]["median_s"])
    peers = [(float(group[p]["median_s"]), p) for p in ITERATIVE
             if p in group and group[p]["median_s"]]
    speed = f"{min(peers)[0] / t:.2f}x {min(peers)[1]}" if peers else "-"
    if "numpy matmul" not in group:
        return speed, "-"
    dq = float(group["deqbench"]["gflops"])
    mm = float(group["numpy matmul"]["gflops"])
    return speed, f"{dq:.1f} / {mm:.1f} ({100 * dq / mm:.0f}%)"


def table(results: Path) -> str:
    every, one = load(results, ALL_THREADS), load(results, ONE_THREAD)
    lines = [HEADER]
    for w in WORKLOADS:
        for m in WIDTHS:
            lines.append("| {} | {} | {} | {} | {} | {} |".format(w, m, *cells(every, (w, m)),
                                                                  *cells(one, (w, m))))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/peers"))
    print(table(ap.parse_args(argv).results))


if __name__ == "__main__":
    main()
